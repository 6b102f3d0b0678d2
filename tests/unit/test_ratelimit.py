"""Rate limits over a hand-moved clock: per-caller windows and failed-authentication throttling."""

from __future__ import annotations

import pytest

from service.errors import RateLimited
from service.store.ratelimit import AuthFailureThrottle, CallerRateLimit
from tests.support.clock import FakeClock


async def test_a_caller_over_its_limit_is_refused_until_the_window_ends() -> None:
    """Limit 2: the third request is a 429 with the time left; refusals are not counted again;
    the next window admits the caller afresh.
    """
    clock = FakeClock(1000.0)
    limit = CallerRateLimit(2, clock=clock)
    await limit.check("airflow")
    await limit.check("airflow")
    clock.now += 10
    with pytest.raises(RateLimited) as refused:
        await limit.check("airflow")
    assert refused.value.retry_after == 50
    with pytest.raises(RateLimited):
        await limit.check("airflow")
    assert limit._budget._shares["airflow"].local_spent == 2  # refused requests count nothing
    await limit.check("reader")  # other callers are unaffected
    clock.now += 50
    await limit.check("airflow")


async def test_a_zero_limit_turns_the_caller_limit_off() -> None:
    """TOKEN_BROKER_RATE_LIMIT_PER_MINUTE=0: nothing is counted or refused."""
    limit = CallerRateLimit(0, clock=FakeClock(1000.0))
    for _ in range(100):
        await limit.check("airflow")


def test_failed_authentications_block_an_address_for_the_window() -> None:
    """Three failures from one address: that address is refused, another is not."""
    clock = FakeClock(1000.0)
    throttle = AuthFailureThrottle(3, clock=clock)
    for _ in range(3):
        throttle.check("10.0.0.1")
        throttle.failed("10.0.0.1")
    with pytest.raises(RateLimited):
        throttle.check("10.0.0.1")
    throttle.check("10.0.0.2")
    clock.now += 60
    throttle.check("10.0.0.1")
