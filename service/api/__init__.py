"""The HTTP side: the only package that knows FastAPI; nothing imports it."""

__all__ = [
    "admin",
    "app",
    "bench",
    "deps",
    "errors",
    "health",
    "middleware",
    "oauth2",
    "schemas",
    "token",
]
