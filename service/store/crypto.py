"""AES-GCM encryption of cached tokens at rest, with key rotation.

Blob layout: ``version (1) | key id (8) | nonce (12) | ciphertext+tag``. The key id is
a hash prefix of the key, so any configured key can be found without trying them all;
the cache key is bound in as associated data so a value cannot be moved to another key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"
_KEY_ID_LEN = 8
_NONCE_LEN = 12
# Every cache-key problem says how to get a good key; none ever shows the key.
NEW_KEY_HINT = "`token-broker new-cache-key` prints a fresh one"


class CacheKeyError(ValueError):
    """A configured cache key is malformed (the message never contains the key)."""


class UndecryptableError(ValueError):
    """A cached blob was written under a key we no longer have, or was tampered with."""


def parse_cache_keys(text: str) -> list[bytes]:
    """Comma-separated URL-safe base64 keys of 32 bytes each, the first being current."""
    keys: list[bytes] = []
    for position, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        try:
            raw = base64.urlsafe_b64decode(item + "=" * (-len(item) % 4))
        except (binascii.Error, ValueError):
            raise CacheKeyError(
                f"cache key #{position} is not URL-safe base64 (expected 43 characters "
                f"A-Z a-z 0-9 - _, comma-separated when rotating); {NEW_KEY_HINT}"
            ) from None
        if len(raw) != 32:  # noqa: PLR2004 - AES-256
            raise CacheKeyError(
                f"cache key #{position} is {len(raw)} bytes; 32 are required; {NEW_KEY_HINT}"
            )
        keys.append(raw)
    if not keys:
        raise CacheKeyError(f"no cache key given; {NEW_KEY_HINT}")
    return keys


def new_cache_key() -> str:
    """A fresh key in the configured text form."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"token-broker cache key id\n" + key).digest()[:_KEY_ID_LEN]


class TokenCipher:
    """Encrypts with the first key; decrypts with whichever key wrote the blob."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise CacheKeyError("no cache key given")
        self._current = (_key_id(keys[0]), AESGCM(keys[0]))
        self._by_id = {_key_id(key): AESGCM(key) for key in keys}

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        """Seal ``plaintext`` bound to ``associated``."""
        key_id, aead = self._current
        nonce = os.urandom(_NONCE_LEN)
        return _VERSION + key_id + nonce + aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, blob: bytes, associated: bytes) -> bytes:
        """Open a blob written by ``encrypt`` under any configured key."""
        header = 1 + _KEY_ID_LEN + _NONCE_LEN
        if len(blob) <= header or blob[:1] != _VERSION:
            raise UndecryptableError("unknown blob format")
        aead = self._by_id.get(blob[1 : 1 + _KEY_ID_LEN])
        if aead is None:
            raise UndecryptableError("written under a key that is no longer configured")
        try:
            return aead.decrypt(blob[1 + _KEY_ID_LEN : header], blob[header:], associated)
        except InvalidTag:
            raise UndecryptableError("authentication tag mismatch") from None
