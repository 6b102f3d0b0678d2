"""One use per assertion: the ``jti`` values already presented, until their tokens expire.

RFC 7523 assertions are meant for one use (section 3, item 7: the server may keep the used
``jti`` values for as long as their JWTs are valid), so a stolen one must not be replayable.
The store is shared by every replica through Redis: ``SET NX PX`` on a hash of (trusted
issuer name, ``jti``), expiring when the token does, so Redis holds neither the token nor
the ``jti``.

Redis follows the token cache's rule (``cache.redis``): it is skipped while ``RedisHealth``
says it is down. Every ``jti`` is also kept in this process, which is then the whole store:
the guarantee holds per process for as long as Redis is away. That in-process store is
bounded; when it is full and Redis cannot be asked, a new assertion is refused with a 503
rather than a used one forgotten, because forgetting would reopen the replay it exists to
stop.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.errors import CacheUnavailable
from service.store.redis import RedisDown

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from service.store.redis import RedisHealth

log = logging.getLogger("token_broker.callers")

_PREFIX = "token-broker:v1:jti:"
MAX_LOCAL_JTIS = 100_000
MIN_TTL_SECONDS = 1.0


class UsedJtis:
    """Implements ``callers.jwt.JtiLedger``: Redis when it answers, this process always."""

    def __init__(
        self,
        *,
        redis: Redis | None = None,
        health: RedisHealth | None = None,
        capacity: int = MAX_LOCAL_JTIS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis if health is not None else None
        self._health = health
        self._capacity = capacity
        self._clock = clock
        self._until: dict[bytes, float] = {}
        self._expiries: list[tuple[float, bytes]] = []
        self._full_logged = False

    def __len__(self) -> int:
        return len(self._until)

    async def first_use(self, issuer: str, jti: str, until: float) -> bool:
        """Record ``jti`` of ``issuer`` until ``until`` (epoch s); False if it was already used.

        Raises ``CacheUnavailable`` when only this process can record it and it has no room.
        """
        now = self._clock()
        self._drop_expired(now)
        # The issuer name cannot hold a NUL, so the pair is encoded unambiguously.
        digest = hashlib.sha256(f"{issuer}\0{jti}".encode("utf-8", "surrogatepass")).digest()
        if digest in self._until:
            return False
        ttl = max(MIN_TTL_SECONDS, until - now)
        if self._redis is not None and self._health is not None:
            redis, name, ttl_ms = self._redis, _PREFIX + digest.hex(), int(ttl * 1000)
            try:
                fresh = await self._health.call(lambda: redis.set(name, b"1", nx=True, px=ttl_ms))
            except RedisDown:
                pass  # degraded: this process's own record is all there is
            else:
                # Kept here too, so an outage later does not forget it; Redis already holds
                # it, so a full local store may skip it.
                self._remember(digest, now + ttl)
                return bool(fresh)
        if digest in self._until:
            return False  # the same jti, recorded while this one waited on Redis
        if not self._remember(digest, now + ttl):
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "the in-process store of used assertion ids is full and Redis is unavailable;"
                    " refusing new assertions of issuers with replay: refuse",
                    extra={"capacity": self._capacity},
                )
            raise CacheUnavailable(
                "cannot record this assertion's jti now (replay store full, Redis unavailable)"
            )
        return True

    def _remember(self, digest: bytes, until: float) -> bool:
        if digest in self._until:
            return True
        if len(self._until) >= self._capacity:
            return False
        self._full_logged = False
        self._until[digest] = until
        heapq.heappush(self._expiries, (until, digest))
        return True

    def _drop_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            until, digest = heapq.heappop(self._expiries)
            if self._until.get(digest) == until:
                del self._until[digest]
