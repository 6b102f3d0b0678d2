"""API keys: ``tbk_<id>_<secret>``; the config holds only the hex SHA-256 of the whole key.

Lookup is a dict keyed by the key's hash, then a constant-time comparison: timing can at
most reveal a prefix of a SHA-256 digest, which does not help find a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

from service.errors import InvalidClient
from service.models import Caller

_SHAPE = re.compile(r"tbk_[a-z0-9]{4,32}_[A-Za-z0-9_-]{16,256}")


def new_api_key() -> str:
    """A fresh key; the id part lets people tell keys apart without the secret."""
    return f"tbk_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def key_hash(key: str) -> str:
    """The value to store as ``api_key_sha256``."""
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_api_key(value: str) -> bool:
    """Whether ``value`` has the shape of a broker API key."""
    return _SHAPE.fullmatch(value) is not None


class ApiKeyAuthenticator:
    """Maps presented keys to callers."""

    def __init__(self, api_keys: Mapping[str, str], callers: Mapping[str, Caller]) -> None:
        self._by_hash = dict(api_keys)
        self._hash_by_caller = {name: digest for digest, name in api_keys.items()}
        self._callers = callers

    def authenticate(self, key: str) -> Caller:
        """The caller owning ``key``."""
        if not looks_like_api_key(key):
            raise InvalidClient("malformed API key")
        digest = key_hash(key)
        name = self._by_hash.get(digest)
        if name is None or not hmac.compare_digest(digest, self._hash_by_caller[name]):
            raise InvalidClient("unknown API key")
        return self._callers[name]

    def authenticate_client(self, client_id: str, secret: str) -> Caller:
        """OAuth2 client authentication: the caller name as client_id, its key as secret."""
        expected = self._hash_by_caller.get(client_id)
        presented = key_hash(secret)
        # Compare even for an unknown client so both failures take the same time.
        if not hmac.compare_digest(presented, expected or "0" * 64) or expected is None:
            raise InvalidClient("client authentication failed")
        return self._callers[client_id]
