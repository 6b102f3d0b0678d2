"""Abuse limits: hand-outs per caller per minute, and failed authentications per address.

Caller limits are shared by all replicas through Redis by leasing shares of each caller's
per-minute budget (``store/budget.py``: exact across replicas while Redis answers, no round
trip per request) and fall back to an in-process window when Redis is down or not
configured. Failed authentications are counted per client address in process only: they
come before any caller is known, and a dictionary lookup is the cheapest thing a flood of
bad credentials can be made to cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.errors import RateLimited
from service.observe import metrics
from service.store.budget import Budget

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from service.store.redis import RedisHealth

WINDOW_SECONDS = 60.0
MAX_TRACKED = 10_000
# The same counters as before leases: replicas of either version add to one count.
_PREFIX = "token-broker:v1:rate:"


class WindowCounter:
    """Fixed one-minute windows per key, bounded in the number of keys it remembers."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> tuple[int, float]:
        """Count one event for ``key``: the count in the current window and seconds left in it."""
        now = self._clock()
        started, count = self._windows.get(key, (now, 0))
        if now - started >= WINDOW_SECONDS:
            started, count = now, 0
        count += 1
        if key not in self._windows and len(self._windows) >= MAX_TRACKED:
            self._forget(now)
        self._windows[key] = (started, count)
        return count, started + WINDOW_SECONDS - now

    def count(self, key: str) -> tuple[int, float]:
        """The count and seconds left in ``key``'s current window, without counting."""
        window = self._windows.get(key)
        if window is None:
            # Every request asks about its address; almost none has failed before.
            return 0, 0.0
        now = self._clock()
        started, count = window
        if now - started >= WINDOW_SECONDS:
            return 0, 0.0
        return count, started + WINDOW_SECONDS - now

    def _forget(self, now: float) -> None:
        for key in [k for k, (s, _) in self._windows.items() if now - s >= WINDOW_SECONDS]:
            del self._windows[key]
        while len(self._windows) >= MAX_TRACKED:
            del self._windows[next(iter(self._windows))]


class CallerRateLimit:
    """At most ``per_minute`` hand-outs per caller per minute, across replicas when possible.

    Spent from a local share of the caller's budget leased from Redis (``store/budget.py``):
    a hand-out waits on Redis only when this replica holds no share of the caller's budget.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        redis: Redis | None = None,
        health: RedisHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = per_minute
        self._budget = Budget(per_minute, prefix=_PREFIX, redis=redis, health=health, clock=clock)

    async def aclose(self) -> None:
        """Finish or cancel the leases in flight (shutdown)."""
        await self._budget.aclose()

    async def check(self, caller: str) -> None:
        """Count one request by ``caller``; raise ``RateLimited`` beyond the limit."""
        if self._limit <= 0:
            return
        verdict = self._budget.try_spend(caller) or await self._budget.spend(caller)
        if not verdict.allowed:
            metrics.labelled(metrics.rate_limited, "caller").inc()
            raise RateLimited(
                f"caller '{caller}' is over {self._limit} requests per minute",
                verdict.retry_after,
            )


class AuthFailureThrottle:
    """After ``per_minute`` failed authentications from one address, refuse it until the
    window ends, before looking at its credential.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_minute
        self._failures = WindowCounter(clock=clock)

    def check(self, address: str | None) -> None:
        """Raise ``RateLimited`` while ``address`` is over its failure budget."""
        count, left = self._failures.count(address or "-")
        if count >= self._limit:
            metrics.rate_limited.labels("auth_failures").inc()
            raise RateLimited("too many failed authentications from this address", left)

    def failed(self, address: str | None) -> None:
        """Count one failed authentication from ``address``."""
        metrics.auth_failures.inc()
        self._failures.hit(address or "-")
