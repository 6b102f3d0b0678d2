"""The issuer budget: exchanges per profile per minute, counted where an exchange happens."""

from __future__ import annotations

import pytest

from service.core.broker import Broker
from service.errors import UpstreamUnavailable
from service.models import Grant, IssuedToken
from service.store.budget import IssuerBudget
from service.store.memory import MemoryTokenCache
from tests.support.clock import FakeClock


class Source:
    """An issuer that counts exchanges and issues one-hour tokens."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls = 0

    async def fetch(self, profile: str, scopes: tuple[str, ...]) -> IssuedToken:
        """A fresh token."""
        self.calls += 1
        now = self.clock()
        return IssuedToken(f"token-{self.calls}", "Bearer", now, now + 3600, " ".join(scopes))


def _broker(clock: FakeClock, source: Source, limit: int, hits: list[str]) -> Broker:
    return Broker(
        cache=MemoryTokenCache(clock=clock),
        source=source,
        profiles={"p": "issuer|client"},
        clock=clock,
        budget=IssuerBudget({"p": limit}, clock=clock, on_exceeded=hits.append),
    )


async def test_over_budget_exchanges_are_503_and_cost_no_issuer_call() -> None:
    """Budget 3: the 4th distinct scope set is a 503 with Retry-After; the issuer saw 3."""
    clock, hits = FakeClock(1000.0), list[str]()
    source = Source(clock)
    broker = _broker(clock, source, 3, hits)
    for scope in ("a", "b", "c"):
        await broker.issue(Grant(caller="x", profile="p", scopes=(scope,)))
    with pytest.raises(UpstreamUnavailable, match="issuer budget of 3") as refused:
        await broker.issue(Grant(caller="x", profile="p", scopes=("d",)))
    assert source.calls == 3
    assert 1 <= refused.value.retry_after <= 60
    assert hits == ["p"]


async def test_cached_tokens_are_served_while_over_budget() -> None:
    """Over budget, a scope set already cached is still handed out, without an exchange."""
    clock, hits = FakeClock(1000.0), list[str]()
    source = Source(clock)
    broker = _broker(clock, source, 1, hits)
    first = await broker.issue(Grant(caller="x", profile="p", scopes=("a",)))
    with pytest.raises(UpstreamUnavailable):
        await broker.issue(Grant(caller="x", profile="p", scopes=("b",)))
    again = await broker.issue(Grant(caller="x", profile="p", scopes=("a",)))
    assert again.token == first.token
    assert again.source == "cache"
    assert source.calls == 1


async def test_the_budget_comes_back_with_the_next_minute() -> None:
    """A minute later the profile may exchange again."""
    clock, hits = FakeClock(1000.0), list[str]()
    source = Source(clock)
    broker = _broker(clock, source, 1, hits)
    await broker.issue(Grant(caller="x", profile="p", scopes=("a",)))
    with pytest.raises(UpstreamUnavailable):
        await broker.issue(Grant(caller="x", profile="p", scopes=("b",)))
    clock.now += 61
    await broker.issue(Grant(caller="x", profile="p", scopes=("b",)))
    assert source.calls == 2


async def test_a_zero_budget_is_unlimited() -> None:
    """issuer_budget 0 turns the budget off for that profile."""
    clock, hits = FakeClock(1000.0), list[str]()
    source = Source(clock)
    broker = _broker(clock, source, 0, hits)
    for scope in "abcdefgh":
        await broker.issue(Grant(caller="x", profile="p", scopes=(scope,)))
    assert source.calls == 8
