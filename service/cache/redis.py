"""Shared L2 cache and cross-replica refresh lock on Redis (redis-py asyncio).

Values are AES-GCM blobs (``crypto.TokenCipher``); Redis never sees a token in plain text.
Keys are hashes, so they reveal neither profile nor scopes.

Redis is an optimisation, never a single point of failure: a failed read is a miss, a failed
write is skipped, and a lock that cannot be taken in Redis falls back to the in-process
single-flight, which still allows only one exchange per replica.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

import orjson
from redis.exceptions import RedisError

from service.cache.crypto import TokenCipher, UndecryptableError
from service.models import IssuedToken

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("token_broker.cache")

PREFIX = "token-broker:v1:"
_LOCAL_LEASE = "local"

# Delete the lock only if it still holds our lease: a holder that overran its lease must
# not release the lock a successor now holds.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisTokenCache:
    """Encrypted tokens in Redis, each with a TTL that ends before the token does."""

    def __init__(self, client: Redis, cipher: TokenCipher) -> None:
        self._client = client
        self._cipher = cipher

    async def get(self, key: str) -> IssuedToken | None:
        """Decrypt the token under ``key``; an unreadable value counts as a miss."""
        name = PREFIX + "token:" + key
        try:
            blob = await self._client.get(name)
        except RedisError as exc:
            log.warning(
                "redis read failed; treating as a miss", extra={"reason": type(exc).__name__}
            )
            return None
        if not isinstance(blob, bytes):
            return None
        try:
            data = orjson.loads(self._cipher.decrypt(blob, name.encode()))
            return IssuedToken(
                access_token=data["access_token"],
                token_type=data["token_type"],
                issued_at=float(data["issued_at"]),
                expires_at=float(data["expires_at"]),
                scope=data["scope"],
            )
        except (UndecryptableError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "cached token unreadable; treating as a miss", extra={"reason": type(exc).__name__}
            )
            return None

    async def put(self, key: str, token: IssuedToken, ttl: float) -> None:
        """Encrypt and store with a millisecond TTL."""
        name = PREFIX + "token:" + key
        plaintext = orjson.dumps(
            {
                "access_token": token.access_token,
                "token_type": token.token_type,
                "issued_at": token.issued_at,
                "expires_at": token.expires_at,
                "scope": token.scope,
            }
        )
        try:
            await self._client.set(
                name, self._cipher.encrypt(plaintext, name.encode()), px=max(1, int(ttl * 1000))
            )
        except RedisError as exc:
            log.warning("redis write failed; not shared", extra={"reason": type(exc).__name__})


class RedisRefreshLock:
    """``SET NX PX`` lease; released only by its holder, expires if the holder dies."""

    def __init__(self, client: Redis, lease_seconds: float) -> None:
        self._client = client
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._release = client.register_script(_RELEASE)

    async def acquire(self, key: str) -> str | None:
        """A random lease id when the lock was free."""
        lease = secrets.token_hex(16)
        try:
            acquired = await self._client.set(
                PREFIX + "lock:" + key, lease, nx=True, px=self._lease_ms
            )
        except RedisError as exc:
            log.warning(
                "redis lock failed; single-flight is per replica",
                extra={"reason": type(exc).__name__},
            )
            return _LOCAL_LEASE
        return lease if acquired else None

    async def release(self, key: str, lease: str) -> None:
        """Compare-and-delete, atomically in Redis; an unreleased lease expires by itself."""
        if lease == _LOCAL_LEASE:
            return
        try:
            await self._release(keys=[PREFIX + "lock:" + key], args=[lease])
        except RedisError as exc:
            log.warning(
                "redis unlock failed; lease will expire", extra={"reason": type(exc).__name__}
            )
