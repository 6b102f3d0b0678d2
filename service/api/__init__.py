"""The HTTP side: the only package that knows FastAPI; nothing imports it."""
