"""The hand-out use case over fakes: every refusal audited and counted, the broker asked last."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pytest

from service.core.handout import UNKNOWN, Handout
from service.core.policy import GrantRule, Policy
from service.errors import AccessDenied, BrokerError, RateLimited, UpstreamUnavailable
from service.models import Caller, Grant, Issued, IssuedToken, TokenRequest
from tests.support.clock import FakeClock

NOW = 1_000_000.0
ALICE = Caller("alice")
SCOPES = frozenset({"read", "write"})


class FakeRateLimit:
    """Lets everyone through until told to refuse."""

    def __init__(self) -> None:
        self.refuse = False
        self.checked: list[str] = []

    async def check(self, caller: str) -> None:
        self.checked.append(caller)
        if self.refuse:
            raise RateLimited("over the limit", retry_after=3)


class FakeBroker:
    """Issues a token living an hour, or fails as told; records each grant."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.grants: list[Grant] = []
        self.fail: BrokerError | None = None

    async def issue(self, grant: Grant) -> Issued:
        self.grants.append(grant)
        if self.fail is not None:
            raise self.fail
        now = self.clock()
        return Issued(
            IssuedToken("tok", "Bearer", now, now + 3600, " ".join(grant.scopes)), "cache"
        )


class FakeAudit:
    """Keeps every line."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    async def __call__(self, outcome: str, **fields: Any) -> None:
        self.lines.append({"outcome": outcome, **fields})


class FakeMeter:
    """Keeps every count and observation."""

    def __init__(self) -> None:
        self.counts: list[tuple[str, str]] = []
        self.lives: list[tuple[str, float]] = []

    def handed_out(self, profile: str, outcome: str) -> None:
        self.counts.append((profile, outcome))

    def remaining_life(self, profile: str, seconds: float) -> None:
        self.lives.append((profile, seconds))


class World:
    """A hand-out wired to fakes, with alice granted ``ingestion``."""

    def __init__(self) -> None:
        self.clock = FakeClock(NOW)
        self.rate = FakeRateLimit()
        self.broker = FakeBroker(self.clock)
        self.audit = FakeAudit()
        self.meter = FakeMeter()
        rule = GrantRule("ingestion", SCOPES, profile_scopes=SCOPES)
        profiles: Mapping[str, Collection[str]] = {"ingestion": SCOPES}
        self.handout = Handout(
            rate_limit=self.rate,
            policy=Policy({"alice": {"ingestion": rule}}),
            broker=self.broker,
            known_scopes=profiles.get,
            audit=self.audit,
            meter=self.meter,
            clock=self.clock,
        )

    async def ask(
        self, profile: str = "ingestion", scopes: tuple[str, ...] | None = None
    ) -> Issued:
        return await self.handout.issue(ALICE, TokenRequest(profile, scopes), "10.0.0.1")


@pytest.fixture
def world() -> World:
    """A fresh world per test."""
    return World()


async def test_issued_is_audited_and_counted(world: World) -> None:
    """A hand-out leaves one ``issued`` line and both metrics."""
    issued = await world.ask(scopes=("read",))
    assert issued.token.access_token == "tok"
    [line] = world.audit.lines
    assert line["outcome"] == "issued"
    assert (line["caller"], line["profile"], line["scopes"]) == ("alice", "ingestion", ("read",))
    assert (line["token"], line["source"], line["expires_in"], line["client"]) == (
        "tok",
        "cache",
        3600,
        "10.0.0.1",
    )
    assert world.meter.counts == [("ingestion", "issued")]
    assert world.meter.lives == [("ingestion", 3600)]


async def test_rate_limited_never_reaches_policy_or_broker(world: World) -> None:
    """Over the caller's limit: refused, audited as denied, counted, the broker untouched."""
    world.rate.refuse = True
    with pytest.raises(RateLimited):
        await world.ask()
    assert world.broker.grants == []
    [line] = world.audit.lines
    assert (line["outcome"], line["reason"], line["profile"]) == (
        "denied",
        "temporarily_unavailable",
        "ingestion",
    )
    assert world.meter.counts == [("ingestion", "denied")]
    assert world.meter.lives == []


async def test_policy_refusal_never_reaches_broker(world: World) -> None:
    """No grant for the profile: denied before any exchange, and caller input stays out."""
    with pytest.raises(AccessDenied):
        await world.ask(profile="pasted-secret", scopes=("read", "sk-123"))
    assert world.broker.grants == []
    [line] = world.audit.lines
    assert (line["outcome"], line["reason"]) == ("denied", "unauthorized_client")
    assert line["profile"] == UNKNOWN
    assert line["scopes"] == (UNKNOWN, UNKNOWN)
    assert world.meter.counts == [(UNKNOWN, "denied")]


async def test_unknown_scope_of_known_profile_is_not_repeated(world: World) -> None:
    """A scope beyond the grant is refused; only configured scope names reach the audit line."""
    with pytest.raises(AccessDenied):
        await world.ask(scopes=("read", "sk-123"))
    assert world.broker.grants == []
    assert world.audit.lines[0]["scopes"] == ("read", UNKNOWN)


async def test_upstream_failure_is_counted_as_error(world: World) -> None:
    """A 5xx from the broker is an ``error``, not a ``denied``, and is still audited."""
    world.broker.fail = UpstreamUnavailable("issuer down")
    with pytest.raises(UpstreamUnavailable):
        await world.ask()
    assert len(world.broker.grants) == 1
    assert world.audit.lines[0]["reason"] == "temporarily_unavailable"
    assert world.meter.counts == [("ingestion", "error")]
