"""Who is asking: each module turns a presented credential into a ``Caller`` or refuses."""

__all__ = ["api_keys", "authenticator", "jwks", "jwt", "replay"]
