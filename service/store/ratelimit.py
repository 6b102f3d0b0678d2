"""Abuse limits: hand-outs per caller per minute, and failed authentications per address.

Caller limits are shared by all replicas through Redis (one ``INCR`` + ``PEXPIRE`` per
request in a fixed one-minute window, atomically in a script) and fall back to an
in-process window when Redis is down or not configured. Failed authentications are counted
per client address in process only: they come before any caller is known, and a dictionary
lookup is the cheapest thing a flood of bad credentials can be made to cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.errors import RateLimited
from service.observe import metrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from service.store.redis import RedisHealth

WINDOW_SECONDS = 60.0
MAX_TRACKED = 10_000
_PREFIX = "token-broker:v1:rate:"
# INCR the window counter and set its expiry on first use; return the count and the ms left.
_INCR = """
local count = redis.call('incr', KEYS[1])
if count == 1 then
    redis.call('pexpire', KEYS[1], ARGV[1])
end
return {count, redis.call('pttl', KEYS[1])}
"""


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
        now = self._clock()
        started, count = self._windows.get(key, (now, 0))
        if now - started >= WINDOW_SECONDS:
            return 0, 0.0
        return count, started + WINDOW_SECONDS - now

    def _forget(self, now: float) -> None:
        for key in [k for k, (s, _) in self._windows.items() if now - s >= WINDOW_SECONDS]:
            del self._windows[key]
        while len(self._windows) >= MAX_TRACKED:
            del self._windows[next(iter(self._windows))]


class CallerRateLimit:
    """At most ``per_minute`` hand-outs per caller per minute, across replicas when possible."""

    def __init__(
        self,
        per_minute: int,
        *,
        redis: Redis | None = None,
        health: RedisHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = per_minute
        self._redis = redis
        self._health = health
        self._script = redis.register_script(_INCR) if redis is not None else None
        self._local = WindowCounter(clock=clock)
        self._clock = clock
        self._blocked: dict[str, float] = {}

    async def check(self, caller: str) -> None:
        """Count one request by ``caller``; raise ``RateLimited`` beyond the limit."""
        if self._limit <= 0:
            return
        now = self._clock()
        blocked_until = self._blocked.get(caller, 0.0)
        if now < blocked_until:
            # Already over in this window: refuse without another Redis round trip.
            self._refuse(caller, blocked_until - now)
        count, left = await self._hit(caller)
        if count > self._limit:
            if len(self._blocked) >= MAX_TRACKED:
                self._blocked.clear()
            self._blocked[caller] = now + left
            self._refuse(caller, left)

    def _refuse(self, caller: str, left: float) -> None:
        metrics.labelled(metrics.rate_limited, "caller").inc()
        raise RateLimited(f"caller '{caller}' is over {self._limit} requests per minute", left)

    async def _hit(self, caller: str) -> tuple[int, float]:
        if self._script is not None and self._health is not None:
            from service.store.redis import RedisDown  # noqa: PLC0415 - keeps redis optional

            script = self._script
            try:
                count, ttl_ms = await self._health.call(
                    lambda: script(keys=[_PREFIX + caller], args=[int(WINDOW_SECONDS * 1000)])
                )
            except RedisDown:
                pass  # degraded: this replica's own window still limits
            else:
                return int(count), max(int(ttl_ms), 0) / 1000
        return self._local.hit(caller)


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
