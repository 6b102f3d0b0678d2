"""ASGI middleware, one concern each: request limits, trusted proxies."""
