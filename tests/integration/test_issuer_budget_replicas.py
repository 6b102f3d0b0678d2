"""The issuer budget and the per-caller limit with 3 replicas on one Redis: counts, no timing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from service.config.settings import Settings
from service.store.crypto import new_cache_key
from tests.support import OidcProvider
from tests.support.audit_trail import AuditTrail
from tests.support.broker import bearer, running_broker, write_config

BUDGET = 4
BODY = {"profile": "ingestion"}
# Every non-empty subset of the issuer's scopes is its own cache key: 7 distinct exchanges.
SCOPE_SETS = [
    list(c) for n in (1, 2, 3) for c in itertools.combinations(["ingestion", "read", "write"], n)
]


@asynccontextmanager
async def three_replicas(settings: Settings) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Three brokers in this process, each with its own runtime, on one Redis."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_broker(settings)) for _ in range(3)]


async def test_budget_caps_exchanges_across_replicas_and_cache_still_serves(
    tmp_path: Path,
    issuer: OidcProvider,
    redis_url: str,
    audit_trail: AuditTrail,
) -> None:
    """Budget N: exactly N exchanges reach the issuer over 3 replicas; the other requests that
    need one get 503 + Retry-After, counted and audited; cached tokens are still served."""
    files = write_config(tmp_path, issuer, profile_extra={"issuer_budget": f"{BUDGET}/min"})
    settings = files.settings(redis_url, cache_keys=new_cache_key())
    key = bearer(files.keys["airflow"])
    async with three_replicas(settings) as replicas:
        pending = list(SCOPE_SETS)
        issued: list[list[str]] = []
        refusals: list[httpx.Response] = []
        # Round robin over the replicas until every one is refused: each spends what it leased.
        for broker in itertools.islice(itertools.cycle(replicas), 40):
            answer = await broker.post(
                "/v1/token", json={"profile": "ingestion", "scopes": pending[0]}, headers=key
            )
            if answer.status_code == 200:
                issued.append(pending.pop(0))
            else:
                refusals.append(answer)
        assert issuer.proxy.token_requests == BUDGET
        assert len(issued) == BUDGET
        assert {r.status_code for r in refusals} == {503}
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refusals)
        assert "issuer budget" in refusals[0].json()["error_description"]
        for broker in replicas:  # cached keys need no exchange: served by every replica
            cached = await broker.post(
                "/v1/token", json={"profile": "ingestion", "scopes": issued[0]}, headers=key
            )
            assert cached.status_code == 200
            assert cached.headers["Token-Broker-Source"] == "cache"
        metrics = (await replicas[0].get("/metrics")).text
    assert issuer.proxy.token_requests == BUDGET
    assert 'token_broker_issuer_budget_exceeded_total{profile="ingestion"}' in metrics
    budget_lines = [a for a in audit_trail.lines() if a.get("event") == "issuer_budget"]
    assert len(budget_lines) == len(refusals)
    assert {(a["profile"], a["limit"]) for a in budget_lines} == {("ingestion", BUDGET)}


@pytest.mark.parametrize("limit", [5, 40])
async def test_caller_limit_over_three_replicas_never_admits_more_than_the_limit(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, limit: int
) -> None:
    """Per-caller limit L with 3 replicas: at most L hand-outs in all, at least L minus the
    shares the other two replicas leased and did not spend."""
    files = write_config(tmp_path, issuer)
    settings = files.settings(redis_url, cache_keys=new_cache_key(), rate_limit_per_minute=limit)
    key = bearer(files.keys["airflow"])
    async with three_replicas(settings) as replicas:
        codes = [
            (await broker.post("/v1/token", json={"profile": "ingestion"}, headers=key)).status_code
            for broker in itertools.islice(itertools.cycle(replicas), 3 * limit + 30)
        ]
    admitted = codes.count(200)
    assert admitted <= limit
    assert admitted >= limit - 2 * max(1, limit // 16)
    assert set(codes) == {200, 429}
    assert issuer.proxy.token_requests == 1


@pytest.mark.parametrize("limit", [5, 40])
async def test_a_concurrent_burst_over_three_replicas_never_admits_more_than_the_limit(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, limit: int
) -> None:
    """Per-caller limit L, 3 replicas, 3L + 30 requests in flight at once: at most L admitted."""
    files = write_config(tmp_path, issuer)
    settings = files.settings(redis_url, cache_keys=new_cache_key(), rate_limit_per_minute=limit)
    key = bearer(files.keys["airflow"])
    async with three_replicas(settings) as replicas:
        # One hand-out first, so the burst is served from the cache rather than one flight.
        assert (await replicas[0].post("/v1/token", json=BODY, headers=key)).status_code == 200
        answers = await asyncio.gather(
            *(
                broker.post("/v1/token", json=BODY, headers=key)
                for broker in itertools.islice(itertools.cycle(replicas), 3 * limit + 30)
            )
        )
    codes = [answer.status_code for answer in answers]
    assert set(codes) == {200, 429}
    admitted = codes.count(200) + 1
    assert admitted <= limit
    assert admitted >= limit - 2 * max(1, limit // 16)


async def test_a_concurrent_burst_of_exchanges_never_passes_the_issuer_budget(
    tmp_path: Path, issuer: OidcProvider, redis_url: str
) -> None:
    """Budget N, every scope set asked at once on every replica: N exchanges reach the issuer."""
    files = write_config(tmp_path, issuer, profile_extra={"issuer_budget": f"{BUDGET}/min"})
    settings = files.settings(redis_url, cache_keys=new_cache_key())
    key = bearer(files.keys["airflow"])
    async with three_replicas(settings) as replicas:
        answers = await asyncio.gather(
            *(
                broker.post(
                    "/v1/token", json={"profile": "ingestion", "scopes": scopes}, headers=key
                )
                for broker in replicas
                for scopes in SCOPE_SETS
            )
        )
    codes = [answer.status_code for answer in answers]
    assert set(codes) <= {200, 503}
    assert issuer.proxy.token_requests <= BUDGET
    assert codes.count(503) >= 1
