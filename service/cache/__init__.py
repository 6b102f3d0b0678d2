"""Token caches: in-process (``memory``), shared Redis (``redis``) and their encryption."""
