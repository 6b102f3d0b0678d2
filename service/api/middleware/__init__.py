"""ASGI middleware, one concern each: request ids, header limits, body limit, trusted proxies."""

__all__ = ["body_limits", "header_limits", "proxies", "request_id"]
