"""Shared budgets by leases: the limit holds across replicas with a real Redis, no timing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from service.store.budget import WINDOW_SECONDS, Budget
from service.store.redis import RedisHealth
from tests.support.processes import free_port

T0 = 1_000.0


class Wall:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the session Redis (emptied for the test)."""
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        yield redis
    finally:
        await redis.aclose()


def replicas(count: int, limit: int, redis: aioredis.Redis | None, clock: Wall) -> list[Budget]:
    """``count`` budgets sharing one Redis, as ``count`` broker replicas would."""
    return [
        Budget(
            limit,
            prefix="test:budget:",
            redis=redis,
            health=RedisHealth(probe_interval=60, clock=clock) if redis is not None else None,
            clock=clock,
        )
        for _ in range(count)
    ]


async def _spend_round_robin(budgets: list[Budget], key: str, attempts: int) -> int:
    allowed = 0
    for budget in itertools.islice(itertools.cycle(budgets), attempts):
        allowed += (await budget.spend(key)).allowed
    return allowed


@pytest.mark.parametrize("limit", [1, 7, 50, 600])
async def test_three_replicas_never_exceed_the_limit_together(
    client: aioredis.Redis, limit: int
) -> None:
    """3 replicas on one Redis admit at most ``limit`` per window in all, and lose little."""
    budgets = replicas(3, limit, client, Wall())
    allowed = await _spend_round_robin(budgets, "airflow", 3 * limit + 30)
    assert allowed <= limit
    # Leased but unspent shares are the only loss: at most (replicas - 1) chunks.
    assert allowed >= limit - 2 * max(1, limit // 16)


async def test_keys_and_windows_are_separate(client: aioredis.Redis) -> None:
    """Another key has its own budget, and the next minute starts a fresh one."""
    clock = Wall()
    budgets = replicas(3, 5, client, clock)
    assert await _spend_round_robin(budgets, "a", 20) == 5
    assert await _spend_round_robin(budgets, "b", 20) == 5
    refused = await budgets[0].spend("a")
    assert not refused.allowed
    assert 0 < refused.retry_after <= WINDOW_SECONDS
    clock.now += WINDOW_SECONDS
    await client.delete("test:budget:a")  # Redis' own clock ends the window: as it would
    assert await _spend_round_robin(budgets, "a", 20) == 5


async def test_most_spends_need_no_redis_round_trip(client: aioredis.Redis) -> None:
    """After the first lease, spends come from the local share: few INCRBYs for many spends."""
    (budget,) = replicas(1, 100_000, client, Wall())
    for _ in range(2000):
        verdict = budget.try_spend("airflow")
        if verdict is None:
            verdict = await budget.spend("airflow")
        assert verdict.allowed
    total = int(await client.get("test:budget:airflow") or 0)
    assert 2000 <= total <= 2000 + 100_000 // 16


async def test_without_redis_each_replica_limits_alone() -> None:
    """No Redis: each replica admits up to the limit by itself (the stated bound)."""
    budgets = replicas(3, 10, None, Wall())
    assert await _spend_round_robin(budgets, "airflow", 60) == 30


async def test_redis_down_mid_run_each_replica_limits_alone() -> None:
    """Redis configured but unreachable: spends never fail with a 500, each replica falls back
    to its own window and admits at most the limit (the stated bound with Redis down)."""
    dead = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5
    )
    try:
        budgets = replicas(3, 10, dead, Wall())
        assert await _spend_round_robin(budgets, "airflow", 60) == 30
    finally:
        await dead.aclose()


@pytest.mark.parametrize("limit", [5, 60, 600])
async def test_a_concurrent_burst_on_three_replicas_never_exceeds_the_limit(
    client: aioredis.Redis, limit: int
) -> None:
    """Requests that wait together on one small lease are not let through past Redis's count."""
    budgets = replicas(3, limit, client, Wall())
    burst = [budget.spend("airflow") for budget in budgets for _ in range(limit)]
    verdicts = await asyncio.gather(*burst)
    allowed = sum(verdict.allowed for verdict in verdicts)
    assert allowed <= limit
    assert allowed >= limit - 2 * max(1, limit // 16)
    leased = await client.get("test:budget:airflow")
    assert leased is not None
    assert int(leased) >= allowed  # every admitted request was leased from Redis


async def test_close_lets_a_lease_in_flight_finish(client: aioredis.Redis) -> None:
    """Shutdown waits for a background lease: no task is left pending on a Redis connection."""
    (budget,) = replicas(1, 600, client, Wall())
    assert (await budget.spend("airflow")).allowed  # spends its first share: a refill starts
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert others
    await budget.aclose()
    assert all(task.done() and not task.cancelled() for task in others)
    leased = await client.get("test:budget:airflow")
    assert leased is not None
    assert int(leased) == 1 + 2  # the first lease and the refill's
