"""Backoff, circuit breaker and the retrying issuer source, over fakes and a fake clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from service.errors import UpstreamError, UpstreamUnavailable
from service.models import IssuedToken
from service.upstream.exchange import UpstreamTokenSource
from service.upstream.resilience import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    CircuitState,
    retry_after_seconds,
    whole_seconds,
)
from service.upstream.resilient import ResilientTokenSource
from tests.support.clock import FakeClock


class ScriptedSource:
    """An issuer that answers from a script: an exception to raise, or a token."""

    def __init__(self, *script: BaseException | None) -> None:
        self.script = list(script)
        self.calls = 0

    async def fetch(self, profile: str, scopes: tuple[str, ...]) -> IssuedToken:
        self.calls += 1
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        return IssuedToken("tok", "Bearer", 0.0, 3600.0, " ".join(scopes))


def resilient(
    source: ScriptedSource, clock: FakeClock, *, attempts: int = 4, deadline: float = 20.0
) -> tuple[ResilientTokenSource, list[float]]:
    """A retrying source whose sleeps advance the clock and are recorded."""
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    wrapped = ResilientTokenSource(
        source,
        attempts=attempts,
        deadline=deadline,
        backoff=Backoff(0.2, 5.0, rng=lambda: 1.0),
        failure_threshold=3,
        reset_after=30.0,
        clock=clock,
        sleep=sleep,
    )
    return wrapped, sleeps


def state(breaker: CircuitBreaker) -> CircuitState:
    """The breaker's state, read through a call so the type checker does not pin it."""
    return breaker.state


def down(hint: float | None = None) -> UpstreamUnavailable:
    """What the exchange raises for a network error, 5xx or 429."""
    return UpstreamUnavailable("issuer answered HTTP 503", hint=hint)


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    """Ceilings double from the base and stop at the cap; a delay lies in [0, ceiling]."""
    backoff = Backoff(0.5, 3.0, rng=lambda: 0.5)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.delay(3) == 1.0
    assert Backoff(0.5, 3.0, rng=lambda: 0.0).delay(4) == 0.0


def test_breaker_opens_after_threshold_and_fails_fast() -> None:
    """Three consecutive failures open the circuit; calls then fail with the time left."""
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(threshold=3, reset_after=30.0, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.failure()
    assert state(breaker) is CircuitState.CLOSED
    breaker.before_call()
    breaker.failure()
    assert state(breaker) is CircuitState.OPEN
    clock.now += 10
    with pytest.raises(CircuitOpen) as raised:
        breaker.before_call()
    assert raised.value.retry_after == pytest.approx(20.0)


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    """After the reset time one probe goes; others fail fast; the probe's success closes."""
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(threshold=1, reset_after=30.0, clock=clock)
    breaker.failure()
    clock.now += 30
    assert state(breaker) is CircuitState.HALF_OPEN
    breaker.before_call()
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    breaker.success()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.failures == 0
    breaker.before_call()


def test_a_failed_probe_opens_the_circuit_again() -> None:
    """A half-open probe that fails re-opens the circuit for the full reset time."""
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(threshold=5, reset_after=30.0, clock=clock)
    for _ in range(5):
        breaker.failure()
    clock.now += 31
    breaker.before_call()
    breaker.failure()
    assert state(breaker) is CircuitState.OPEN
    assert breaker.retry_after() == pytest.approx(30.0)


def test_the_issuers_retry_after_holds_an_opening_circuit_longer() -> None:
    """A Retry-After beyond the reset time keeps the circuit open that long."""
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(threshold=1, reset_after=30.0, clock=clock)
    breaker.failure(hold=120.0)
    assert breaker.retry_after() == pytest.approx(120.0)


def test_retry_after_parses_seconds_and_http_dates() -> None:
    """Retry-After as delta-seconds or an HTTP date; garbage and naive dates are ignored."""
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 12, 2, 12, 0, 45, tzinfo=UTC), usegmt=True)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(later, now=now) == pytest.approx(45.0)
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("99999999") == 86_400.0
    assert whole_seconds(0.2) == 1
    assert whole_seconds(4.1) == 5


async def test_unavailable_issuer_is_retried_with_backoff_then_succeeds() -> None:
    """Two 503s then a token: three calls, two jittered waits, the token returned."""
    clock = FakeClock(100.0)
    source = ScriptedSource(down(), down(), None)
    wrapped, sleeps = resilient(source, clock)
    token = await wrapped.fetch("p", ("read",))
    assert token.scope == "read"
    assert source.calls == 3
    assert sleeps == [0.2, 0.4]


@pytest.mark.parametrize("code", ["invalid_client", "invalid_scope", "unauthorized_client"])
async def test_issuer_refusals_are_not_retried(code: str) -> None:
    """A refusal (the issuer's error code) is raised after one call; the circuit stays closed."""
    clock = FakeClock(100.0)
    refusal = UpstreamError(f"issuer refused: {code}", issuer_error=code)
    source = ScriptedSource(refusal, refusal, refusal, refusal)
    wrapped, sleeps = resilient(source, clock)
    for _ in range(4):
        with pytest.raises(UpstreamError) as raised:
            await wrapped.fetch("p", ())
        assert not isinstance(raised.value, UpstreamUnavailable)
        assert raised.value.issuer_error == code
    assert source.calls == 4
    assert sleeps == []
    assert state(wrapped.breaker("p")) is CircuitState.CLOSED


async def test_the_issuers_retry_after_is_honoured() -> None:
    """A 429 with Retry-After 3 waits at least 3 s before the next attempt."""
    clock = FakeClock(100.0)
    source = ScriptedSource(down(hint=3.0), None)
    wrapped, sleeps = resilient(source, clock)
    await wrapped.fetch("p", ())
    assert sleeps == [3.0]


async def test_a_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    """Retry-After longer than the deadline: no wait, a 503 telling the caller that long."""
    clock = FakeClock(100.0)
    source = ScriptedSource(down(hint=60.0))
    wrapped, sleeps = resilient(source, clock, deadline=20.0)
    with pytest.raises(UpstreamUnavailable) as raised:
        await wrapped.fetch("p", ())
    assert sleeps == []
    assert raised.value.retry_after == 60


async def test_attempts_stop_at_the_limit_with_a_503() -> None:
    """An issuer that stays down: exactly ``attempts`` calls, then 503 with Retry-After."""
    clock = FakeClock(100.0)
    source = ScriptedSource(*[down()] * 10)
    wrapped, _ = resilient(source, clock, attempts=2)
    with pytest.raises(UpstreamUnavailable) as raised:
        await wrapped.fetch("p", ())
    assert source.calls == 2
    assert raised.value.retry_after >= 1
    assert raised.value.headers() == {"Retry-After": str(raised.value.retry_after)}


async def test_open_circuit_fails_fast_without_calling_the_issuer() -> None:
    """Once three attempts failed the circuit opens: the next fetch makes no call at all."""
    clock = FakeClock(100.0)
    source = ScriptedSource(*[down()] * 10)
    wrapped, _ = resilient(source, clock, attempts=3)
    with pytest.raises(UpstreamUnavailable):
        await wrapped.fetch("p", ())
    assert source.calls == 3
    with pytest.raises(UpstreamUnavailable, match="not asking it again yet") as raised:
        await wrapped.fetch("p", ())
    assert source.calls == 3
    assert raised.value.retry_after == 30
    clock.now += 30
    source.script = [None]
    await wrapped.fetch("p", ())
    assert state(wrapped.breaker("p")) is CircuitState.CLOSED


async def test_a_hanging_issuer_is_cut_off_at_the_deadline() -> None:
    """An issuer that never answers costs at most the deadline, then a 503."""

    class Hanging:
        async def fetch(self, profile: str, scopes: tuple[str, ...]) -> IssuedToken:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    wrapped = ResilientTokenSource(
        Hanging(),
        attempts=3,
        deadline=0.05,
        backoff=Backoff(0.01, 0.01),
        failure_threshold=5,
        reset_after=30.0,
    )
    with pytest.raises(UpstreamUnavailable, match="did not answer in time"):
        await asyncio.wait_for(wrapped.fetch("p", ()), timeout=5)


async def test_a_request_during_a_half_open_probe_waits_for_its_answer() -> None:
    """Half-open: the probe goes; a concurrent request waits for it and then succeeds too."""
    clock = FakeClock(100.0)
    gate = asyncio.Event()

    class Gated(ScriptedSource):
        async def fetch(self, profile: str, scopes: tuple[str, ...]) -> IssuedToken:
            if self.calls == 0:
                self.calls += 1
                await gate.wait()
                return IssuedToken("probe", "Bearer", 0.0, 3600.0, "")
            return await super().fetch(profile, scopes)

    source = Gated()

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    wrapped = ResilientTokenSource(
        source,
        attempts=3,
        deadline=20.0,
        backoff=Backoff(0.2, 5.0),
        failure_threshold=1,
        reset_after=30.0,
        clock=clock,
        sleep=sleep,
    )
    breaker = wrapped.breaker("p")
    breaker.failure()
    clock.now += 30  # half-open: one probe may go
    probe = asyncio.create_task(wrapped.fetch("p", ()))
    await asyncio.sleep(0)
    follower = asyncio.create_task(wrapped.fetch("p", ("read",)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not follower.done()  # waiting on the probe, not refused
    gate.set()
    assert (await probe).access_token == "probe"
    assert (await follower).scope == "read"
    assert state(breaker) is CircuitState.CLOSED


async def test_a_profile_removed_by_a_reload_is_a_502_not_a_crash() -> None:
    """An exchange for a profile the reloaded configuration no longer has: UpstreamError."""
    source = UpstreamTokenSource({})
    try:
        with pytest.raises(UpstreamError, match="no longer configured"):
            await source.fetch("gone", ())
    finally:
        await source.aclose()
