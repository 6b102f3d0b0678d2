"""Where tokens and counters live: in-process (L1), Redis (L2, leases, pub/sub), AES-GCM."""

__all__ = ["budget", "connection", "crypto", "memory", "ratelimit", "redis"]
