"""The broker use case over in-memory fakes: single-flight, refresh-ahead, lease waiting."""

from __future__ import annotations

import asyncio

import pytest

from service.core.broker import Broker
from service.errors import TokenLifetimeTooShort, UpstreamUnavailable
from service.models import Grant, IssuedToken
from service.store.memory import MemoryTokenCache
from tests.support.clock import FakeClock


class CountingSource:
    """An issuer that counts exchanges and can be made slow or failing."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def fetch(self, profile: str, scopes: tuple[str, ...]) -> IssuedToken:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise UpstreamUnavailable("issuer down")
        now = self.clock()
        return IssuedToken(
            f"tok-{self.calls}", "Bearer", now, now + self.lifetime, " ".join(scopes)
        )


class HeldLock:
    """A cross-replica lock that another replica holds until released."""

    def __init__(self) -> None:
        self.held = True

    async def acquire(self, key: str) -> str | None:
        return None if self.held else "lease"

    async def release(self, key: str, lease: str) -> None:
        self.held = False


GRANT = Grant(caller="airflow", profile="p", scopes=("read",))


def _broker(
    clock: FakeClock, source: CountingSource, cache: MemoryTokenCache, **kw: object
) -> Broker:
    return Broker(cache=cache, source=source, profiles={"p": "id"}, clock=clock, **kw)  # type: ignore[arg-type]


async def test_concurrent_misses_share_one_exchange() -> None:
    """200 concurrent misses for one key make one exchange and all get its token."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    source.gate = asyncio.Event()
    broker = _broker(clock, source, MemoryTokenCache(clock=clock))
    waiting = [asyncio.create_task(broker.issue(GRANT)) for _ in range(200)]
    await asyncio.sleep(0)
    source.gate.set()
    issued = await asyncio.gather(*waiting)
    assert source.calls == 1
    assert {i.token.access_token for i in issued} == {"tok-1"}


async def test_waiters_are_reported_while_they_wait_and_cleared_after() -> None:
    """Joiners of an exchange under way are counted up, then back to zero when it ends."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    source.gate = asyncio.Event()
    seen: list[int] = []
    broker = _broker(clock, source, MemoryTokenCache(clock=clock), on_waiters=seen.append)
    waiting = [asyncio.create_task(broker.issue(GRANT)) for _ in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert max(seen) == 4  # the first request exchanges, four join it
    source.gate.set()
    await asyncio.gather(*waiting)
    assert seen[-1] == 0


async def test_a_failed_background_refresh_is_not_retried_before_its_retry_after() -> None:
    """After a refresh fails with Retry-After 5, requests in the next 5 s start no refresh."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    broker = _broker(clock, source, MemoryTokenCache(clock=clock))
    await broker.issue(GRANT)
    clock.now += 2401  # past the refresh point
    source.fail = True
    for _ in range(10):
        await broker.issue(GRANT)
        await asyncio.sleep(0)
    assert source.calls == 2  # the first issue, then one failed refresh
    clock.now += 5
    source.fail = False
    await broker.issue(GRANT)
    await asyncio.sleep(0.01)
    assert source.calls == 3
    await broker.aclose()


async def test_refresh_ahead_returns_old_token_and_refreshes_once() -> None:
    """Past the refresh point, callers keep the old token while one background refresh runs."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    broker = _broker(clock, source, MemoryTokenCache(clock=clock))
    await broker.issue(GRANT)
    clock.now += 2401  # past 2/3 of 3600 s
    source.gate = asyncio.Event()
    during = [await broker.issue(GRANT) for _ in range(5)]
    assert {(i.token.access_token, i.source) for i in during} == {("tok-1", "cache")}
    source.gate.set()
    await asyncio.sleep(0.01)
    after = await broker.issue(GRANT)
    assert (after.token.access_token, source.calls) == ("tok-2", 2)
    await broker.aclose()


async def test_failed_background_refresh_keeps_serving_valid_token() -> None:
    """A refresh that fails leaves the still-valid cached token in service."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    broker = _broker(clock, source, MemoryTokenCache(clock=clock))
    await broker.issue(GRANT)
    clock.now += 3000
    source.fail = True
    assert (await broker.issue(GRANT)).token.access_token == "tok-1"
    await asyncio.sleep(0.01)
    assert (await broker.issue(GRANT)).token.access_token == "tok-1"


async def test_expired_token_is_never_handed_out() -> None:
    """After expiry with the issuer down, the caller gets 503, not the dead token."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    cache = MemoryTokenCache(clock=clock)
    broker = _broker(clock, source, cache)
    await broker.issue(GRANT)
    clock.now += 3600
    source.fail = True
    with pytest.raises(UpstreamUnavailable):
        await broker.issue(GRANT)


async def test_waiter_takes_the_value_written_by_the_lock_holder() -> None:
    """While another replica holds the lease, this one waits for its value instead of fetching."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    cache = MemoryTokenCache(clock=clock)
    broker = _broker(clock, source, cache, lock=HeldLock())
    task = asyncio.create_task(broker.issue(GRANT))
    await asyncio.sleep(0.05)
    key = broker.key_for("p", ("read",))
    await cache.put(key, IssuedToken("other-replica", "Bearer", clock(), clock() + 3600), 3000)
    issued = await asyncio.wait_for(task, 5)
    assert (issued.token.access_token, source.calls) == ("other-replica", 0)


async def test_waiter_gives_up_after_timeout() -> None:
    """A lease never released and no value written ends in a bounded 503."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    broker = _broker(
        clock, source, MemoryTokenCache(clock=clock), lock=HeldLock(), wait_timeout=0.2
    )
    with pytest.raises(UpstreamUnavailable, match="timed out"):
        await broker.issue(GRANT)
    assert source.calls == 0


async def test_min_ttl_longer_than_issuer_lifetime() -> None:
    """A min_ttl the issuer cannot meet raises TokenLifetimeTooShort with the lifetime."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock, lifetime=600)
    broker = _broker(clock, source, MemoryTokenCache(clock=clock))
    with pytest.raises(TokenLifetimeTooShort, match="600 s"):
        await broker.issue(Grant(caller="a", profile="p", scopes=(), min_ttl=900))
    with pytest.raises(TokenLifetimeTooShort):
        await broker.issue(Grant(caller="a", profile="p", scopes=(), min_ttl=900))
    assert source.calls == 1


async def test_min_ttl_equal_to_issuer_lifetime_is_refused_after_one_exchange() -> None:
    """min_ttl == the issuer's lifetime: the fresh token is already short, so 400, one call."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock, lifetime=600)
    broker = _broker(clock, source, MemoryTokenCache(clock=clock))
    original = source.fetch

    async def slow_fetch(profile: str, scopes: tuple[str, ...]) -> IssuedToken:
        token = await original(profile, scopes)
        clock.now += 0.5  # the exchange itself takes time
        return token

    source.fetch = slow_fetch  # type: ignore[method-assign]
    with pytest.raises(TokenLifetimeTooShort, match="min_ttl 600 s cannot be satisfied"):
        await broker.issue(Grant(caller="a", profile="p", scopes=(), min_ttl=600))
    assert source.calls == 1


def test_cache_key_ignores_scope_order() -> None:
    """The same scope set in any order maps to one cache key."""
    clock = FakeClock(1_000_000.0)
    broker = _broker(clock, CountingSource(clock), MemoryTokenCache(clock=clock))
    assert broker.key_for("p", ("b", "a")) == broker.key_for("p", ("a", "b"))
    assert broker.key_for("p", ("a",)) != broker.key_for("p", ("a", "b"))


async def test_close_lets_an_exchange_in_flight_finish_before_cancelling() -> None:
    """Shutdown waits (bounded) for an exchange in flight: it ends and is cached, not cut off."""
    clock = FakeClock(1_000_000.0)
    source = CountingSource(clock)
    source.gate = asyncio.Event()
    cache = MemoryTokenCache(clock=clock)
    broker = _broker(clock, source, cache)
    asking = asyncio.create_task(broker.issue(GRANT))
    await asyncio.sleep(0)  # the exchange starts and waits on the issuer
    asyncio.get_running_loop().call_later(0.05, source.gate.set)
    await broker.aclose()
    issued = await asking
    assert (issued.token.access_token, issued.source) == ("tok-1", "issuer")
    assert await cache.get(broker.key_for(GRANT.profile, GRANT.scopes)) is not None
