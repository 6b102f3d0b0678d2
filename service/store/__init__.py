"""Where tokens and counters live: in-process (L1), Redis (L2, leases, pub/sub), AES-GCM."""
