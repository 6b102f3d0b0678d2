"""Shared per-minute budgets without a Redis round trip per request: leases of the budget.

A budget is ``limit`` events per key per minute, shared by every replica. Each replica leases
a share of the current minute's budget from Redis (one ``INCRBY`` on a counter that all
replicas add to) and spends it locally, with no I/O; it asks for the next share in the
background when half of the current one is spent. So:

* **While Redis answers, the limit holds exactly across replicas**: Redis hands out at most
  ``limit`` per window in all, and a replica only spends what it was handed. The error is in
  the other direction: a share leased but not spent by the end of the window is lost, so a
  key near its limit may be refused up to ``(replicas - 1) * chunk`` early (``chunk`` grows
  from 1 to at most a sixteenth of the limit as a key keeps spending).
* **While Redis is down (or not configured)**, each replica limits alone: at most
  ``replicas * limit`` in all, which is what the previous per-request design gave too.
* A request waits on Redis only when its replica holds no share at all (the first request of
  a key in a window, or a burst faster than the background refill).

A window starts with the first event of a key (as before: a fixed minute from the first
hand-out), and replicas agree on it through the counter's expiry in Redis: each lease answers
how long the window has left. At the window's end a replica may spend what is left of its
share for up to one Redis round trip into the next window: at most one chunk per replica.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.errors import UpstreamUnavailable
from service.tasks import finish_or_cancel

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from service.store.redis import RedisHealth

__all__ = ["WINDOW_SECONDS", "Budget", "IssuerBudget", "Verdict"]

WINDOW_SECONDS = 60.0
# Leases one waiting request may sit through (a burst needs about 16 + log2(limit)).
MAX_LEASE_ROUNDS = 64
# How long shutdown waits for leases in flight, twice (before and after cancelling them).
CLOSE_WAIT_SECONDS = 1.0
MAX_TRACKED = 10_000
_ISSUER_PREFIX = "token-broker:v1:issuer-budget:"
# INCRBY the window's counter by the share asked for, starting the window on first use;
# the reply is the total handed out in this window and the milliseconds it has left.
_LEASE = """
local total = redis.call('incrby', KEYS[1], ARGV[1])
if total == tonumber(ARGV[1]) then
    redis.call('pexpire', KEYS[1], ARGV[2])
end
return {total, redis.call('pttl', KEYS[1])}
"""


@dataclass(slots=True)
class _Share:
    ends_at: float  # this replica's estimate of when the shared window ends
    left: int = 0  # leased and not yet spent
    chunk: int = 1  # the next lease asks for this much
    exhausted: bool = False  # Redis has no more for this window
    waiting: int = 0  # requests waiting on the lease in flight
    local_spent: int = 0  # spent while Redis was down: this replica's own window
    refill: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an event may happen, and if not, seconds until the window ends."""

    allowed: bool
    retry_after: float = 0.0


# Immutable, so one instance serves every allowed event (the hot path allocates nothing).
ALLOWED = Verdict(allowed=True)


class Budget:
    """``limit`` events per key per wall-clock minute, shared through Redis by leases."""

    def __init__(
        self,
        limit: int,
        *,
        prefix: str,
        redis: Redis | None = None,
        health: RedisHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._prefix = prefix
        self._redis = redis
        self._health = health
        self._script = redis.register_script(_LEASE) if redis is not None else None
        self._clock = clock
        self._shares: dict[str, _Share] = {}
        self._leases: set[asyncio.Task[None]] = set()
        self._max_chunk = max(1, limit // 16)

    def try_spend(self, key: str) -> Verdict | None:
        """Spend one from the local share without I/O; ``None`` when a lease is needed first."""
        now = self._clock()
        share = self._share(key, now)
        if share.left > 0:
            share.left -= 1
            if share.left <= share.chunk // 2 and not share.exhausted:
                self._refill_in_background(key, share)
            return ALLOWED
        if share.exhausted:
            return Verdict(allowed=False, retry_after=share.ends_at - now)
        if self._script is None or self._health is None or not self._health.up:
            return self._spend_locally(share, now)
        return None

    async def spend(self, key: str) -> Verdict:
        """Spend one, leasing from Redis first when this replica holds no share.

        Requests that arrive together wait on one lease; those it did not cover wait on the
        next (asking for as many as are waiting, up to a chunk). Each lease grants something,
        exhausts the window or finds Redis down (then ``try_spend`` limits locally), so this
        ends within about ``16 + log2(limit)`` leases; ``MAX_LEASE_ROUNDS`` bounds it anyway,
        and a request still uncovered then is refused: nothing is admitted that Redis did not
        count.
        """
        for _ in range(MAX_LEASE_ROUNDS):
            verdict = self.try_spend(key)
            if verdict is not None:
                return verdict
            share = self._share(key, self._clock())
            refill = self._refill_in_background(key, share)
            share.waiting += 1
            try:
                # Shielded: a caller that disconnects must not cancel a lease others wait on.
                await asyncio.shield(refill)
            finally:
                share.waiting -= 1
        return Verdict(allowed=False, retry_after=1.0)

    def _spend_locally(self, share: _Share, now: float) -> Verdict:
        if share.local_spent >= self.limit:
            return Verdict(allowed=False, retry_after=share.ends_at - now)
        share.local_spent += 1
        return ALLOWED

    def _share(self, key: str, now: float) -> _Share:
        share = self._shares.get(key)
        if share is None or now >= share.ends_at:
            if share is None and len(self._shares) >= MAX_TRACKED:
                self._forget(now)
            share = _Share(ends_at=now + WINDOW_SECONDS)
            self._shares[key] = share
        return share

    def _forget(self, now: float) -> None:
        for key in [k for k, s in self._shares.items() if now >= s.ends_at]:
            del self._shares[key]
        while len(self._shares) >= MAX_TRACKED:
            del self._shares[next(iter(self._shares))]

    def _refill_in_background(self, key: str, share: _Share) -> asyncio.Task[None]:
        if share.refill is None or share.refill.done():
            share.refill = asyncio.ensure_future(self._lease(key, share))
            # Tracked, so that shutdown waits for a lease in flight instead of leaving its
            # task pending and its Redis connection to the garbage collector.
            self._leases.add(share.refill)
            share.refill.add_done_callback(self._leases.discard)
        return share.refill

    async def aclose(self) -> None:
        """Let leases in flight finish (one Redis round trip each), then cancel the rest."""
        await finish_or_cancel(
            self._leases, grace=CLOSE_WAIT_SECONDS, after_cancel=CLOSE_WAIT_SECONDS
        )

    async def _lease(self, key: str, share: _Share) -> None:
        from service.store.redis import RedisDown  # noqa: PLC0415 - keeps redis optional

        assert self._script is not None
        assert self._health is not None
        script = self._script
        # Enough for everyone already waiting, within the chunk bound the README states.
        ask = min(max(share.chunk, share.waiting), self._max_chunk)
        ttl_ms = int(WINDOW_SECONDS * 1000)
        try:
            total, left_ms = await self._health.call(
                lambda: script(keys=[self._prefix + key], args=[ask, ttl_ms])
            )
        except RedisDown:
            return  # the local window limits until Redis answers again
        total, now = int(total), self._clock()
        if self._shares.get(key) is not share or now >= share.ends_at:
            return  # the window ended while asking: this share went with it
        if total == ask:
            # This lease opened a new shared window: what the share held belonged to the old.
            share.left = share.local_spent = 0
            share.exhausted = False
        share.ends_at = now + max(int(left_ms), 0) / 1000
        granted = max(0, min(ask, self.limit - (total - ask)))
        share.left += granted
        if granted < ask:
            share.exhausted = True
        share.chunk = min(share.chunk * 2, self._max_chunk)


class IssuerBudget:
    """Exchanges per profile per minute, shared by every replica: what protects the issuer.

    A per-caller limit protects the broker; many scope sets, ``min_ttl`` misses or
    invalidations in a loop turn into exchanges, and identity providers throttle or lock out a
    client that makes too many. Over its budget, a profile's requests that need an exchange
    get 503 + ``Retry-After`` while cached tokens keep being served.
    """

    def __init__(
        self,
        limits: Mapping[str, int],
        *,
        redis: Redis | None = None,
        health: RedisHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_exceeded: Callable[[str], Awaitable[None] | None] = lambda _: None,
    ) -> None:
        self._redis = redis
        self._health = health
        self._clock = clock
        self._limits: dict[str, int] = {}
        self._budgets: dict[str, Budget] = {}
        self._on_exceeded = on_exceeded
        self.set_limits(limits)

    def set_limits(self, limits: Mapping[str, int]) -> None:
        """New limits (a reload): a profile whose limit is unchanged keeps its shares."""
        budgets: dict[str, Budget] = {}
        for profile, limit in limits.items():
            old = self._budgets.get(profile)
            if limit <= 0:
                continue
            budgets[profile] = (
                old
                if old is not None and old.limit == limit
                else Budget(
                    limit,
                    prefix=_ISSUER_PREFIX,
                    redis=self._redis,
                    health=self._health,
                    clock=self._clock,
                )
            )
        self._limits, self._budgets = dict(limits), budgets

    async def aclose(self) -> None:
        """Finish or cancel every profile's leases in flight (shutdown)."""
        for budget in self._budgets.values():
            await budget.aclose()

    def limit(self, profile: str) -> int:
        """The profile's budget per minute (0: unlimited)."""
        return self._limits.get(profile, 0)

    async def spend(self, profile: str) -> None:
        """Count one exchange for ``profile``; ``UpstreamUnavailable`` when over its budget."""
        budget = self._budgets.get(profile)
        if budget is None:
            return
        verdict = budget.try_spend(profile) or await budget.spend(profile)
        if not verdict.allowed:
            # Awaited: the audit line is written before the refusal is answered.
            if (done := self._on_exceeded(profile)) is not None:
                await done
            raise UpstreamUnavailable(
                f"profile '{profile}' is over its issuer budget of {budget.limit} exchanges "
                "per minute; cached tokens are still served",
                retry_after=max(1, math.ceil(verdict.retry_after)),
            )
