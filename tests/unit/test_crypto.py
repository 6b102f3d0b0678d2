"""Cache encryption: AES-GCM, bound to the cache key, rotatable."""

from __future__ import annotations

import pytest

from service.store.crypto import (
    CacheKeyError,
    TokenCipher,
    UndecryptableError,
    new_cache_key,
    parse_cache_keys,
)


def test_round_trip_hides_plaintext() -> None:
    """A sealed value opens again and does not contain the plaintext."""
    cipher = TokenCipher(parse_cache_keys(new_cache_key()))
    blob = cipher.encrypt(b"the-access-token", b"k1")
    assert b"the-access-token" not in blob
    assert cipher.decrypt(blob, b"k1") == b"the-access-token"


def test_value_bound_to_its_key() -> None:
    """A blob moved to another cache key fails authentication."""
    cipher = TokenCipher(parse_cache_keys(new_cache_key()))
    blob = cipher.encrypt(b"secret", b"k1")
    with pytest.raises(UndecryptableError):
        cipher.decrypt(blob, b"k2")


def test_rotation_old_key_still_decrypts() -> None:
    """After prepending a new key, values written under the old key still open."""
    old, new = new_cache_key(), new_cache_key()
    blob = TokenCipher(parse_cache_keys(old)).encrypt(b"v", b"k")
    rotated = TokenCipher(parse_cache_keys(f"{new},{old}"))
    assert rotated.decrypt(blob, b"k") == b"v"
    fresh = rotated.encrypt(b"v", b"k")
    with pytest.raises(UndecryptableError):
        TokenCipher(parse_cache_keys(old)).decrypt(fresh, b"k")


@pytest.mark.parametrize("text", ["", "not base64!", "c2hvcnQ"])
def test_bad_keys_are_refused_without_echo(text: str) -> None:
    """Malformed keys raise CacheKeyError whose message does not repeat the key."""
    with pytest.raises(CacheKeyError) as info:
        parse_cache_keys(text)
    if text:
        assert text not in str(info.value)
