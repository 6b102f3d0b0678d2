"""In-process token cache: the only cache of a single replica, or the L1 in front of Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.models import IssuedToken
from service.observe import metrics

if TYPE_CHECKING:
    from service.core.broker import TokenCache


class MemoryTokenCache:
    """A bounded dict of tokens, each dropped when its time-to-live passes."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, max_entries: int = 10_000
    ) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, tuple[IssuedToken, float]] = {}

    async def get(self, key: str) -> IssuedToken | None:
        """The live token under ``key``, or ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        token, dies_at = entry
        if self._clock() >= dies_at:
            self._entries.pop(key, None)
            return None
        return token

    async def put(self, key: str, token: IssuedToken, ttl: float) -> None:
        """Keep ``token`` for ``ttl`` seconds, evicting the oldest entry when full."""
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries.pop(key, None)
        if len(self._entries) >= self._max_entries:
            self._evict()
        self._entries[key] = (token, self._clock() + ttl)

    async def invalidate(self, prefix: str) -> None:
        """Drop every entry whose key starts with ``prefix``."""
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (_, dies_at) in self._entries.items() if dies_at <= now]:
            del self._entries[key]
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]


class TieredTokenCache:
    """An in-process L1 in front of a shared L2, and a fallback for when L2 is down.

    L1 entries never outlive the token's refresh point, so a token refreshed by another
    replica reaches this one no later than that point, and refresh-ahead still triggers
    from the L2 copy. The fallback keeps every token this replica has seen until it
    expires, and is read only while L2 is unreachable: then a token with life left still
    serves even when the issuer is down too. (The broker never hands out a token with less
    than its skew or the caller's ``min_ttl`` left, whichever layer it comes from.)
    """

    def __init__(
        self,
        local: MemoryTokenCache,
        shared: TokenCache,
        *,
        refresh_fraction: float,
        clock: Callable[[], float] = time.time,
        shared_up: Callable[[], bool] = lambda: True,
    ) -> None:
        self._local = local
        self._shared = shared
        self._fallback = MemoryTokenCache(clock=clock)
        self._refresh_fraction = refresh_fraction
        self._clock = clock
        self._shared_up = shared_up

    async def get(self, key: str) -> IssuedToken | None:
        """L1 first, then L2 (copying a still-fresh L2 hit into L1), then the fallback."""
        token = await self._local.get(key)
        if token is not None:
            metrics.labelled(metrics.cache_lookups, "local", "hit").inc()
            return token
        metrics.labelled(metrics.cache_lookups, "local", "miss").inc()
        token = await self._shared.get(key)
        if token is not None:
            metrics.labelled(metrics.cache_lookups, "redis", "hit").inc()
            await self._keep(key, token, token.remaining(self._clock()))
            return token
        metrics.labelled(metrics.cache_lookups, "redis", "miss").inc()
        if not self._shared_up():
            token = await self._fallback.get(key)
            metrics.labelled(
                metrics.cache_lookups, "fallback", "miss" if token is None else "hit"
            ).inc()
        return token

    async def put(self, key: str, token: IssuedToken, ttl: float) -> None:
        """Write through to L2, then L1 up to the refresh point."""
        await self._shared.put(key, token, ttl)
        await self._keep(key, token, ttl)

    async def invalidate(self, prefix: str) -> None:
        """Drop from L2 (which tells the other replicas) and from this replica."""
        await self._shared.invalidate(prefix)
        await self.drop_local(prefix)

    async def drop_local(self, prefix: str) -> None:
        """Drop from this replica's L1 and fallback (another replica invalidated)."""
        await self._local.invalidate(prefix)
        await self._fallback.invalidate(prefix)

    async def _keep(self, key: str, token: IssuedToken, ttl: float) -> None:
        await self._local.put(key, token, min(ttl, self._local_ttl(token)))
        await self._fallback.put(key, token, ttl)

    def _local_ttl(self, token: IssuedToken) -> float:
        return token.refresh_at(self._refresh_fraction) - self._clock()
