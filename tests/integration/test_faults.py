"""The fault suite: issuer outages, Redis crashes, abuse limits, against real processes.

The issuer is the real oidc-provider behind the fault-injecting proxy; Redis is a real
``redis-server`` this module starts, kills and restarts. Time that decides token expiry is
a hand-moved clock; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import OidcProvider, RedisServer, verify_access_token
from tests.support.broker import BrokerFiles, bearer, running_broker, write_config
from tests.support.clock import FakeClock

# Fast failure handling, so an outage costs the suite seconds: 3 attempts in 1 s, a
# circuit that opens after 3 failures and probes again after 0.5 s.
FAST: dict[str, Any] = {
    "upstream_attempts": 3,
    "upstream_deadline_seconds": 1.0,
    "upstream_backoff_base_seconds": 0.05,
    "upstream_backoff_max_seconds": 0.2,
    "circuit_failure_threshold": 3,
    "circuit_reset_seconds": 0.5,
    "redis_timeout_seconds": 0.25,
    "redis_probe_seconds": 0.2,
}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone, so it can be killed."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _token(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    return await client.post(
        "/v1/token", json={"profile": "ingestion", **body}, headers=bearer(key)
    )


async def _burst(client: httpx.AsyncClient, key: str, n: int, **body: Any) -> list[httpx.Response]:
    return list(await asyncio.gather(*(_token(client, key, **body) for _ in range(n))))


async def _ready(client: httpx.AsyncClient) -> str:
    response = await client.get("/readyz")
    assert response.status_code == 200
    status: str = response.json()["status"]
    return status


@pytest.fixture
async def broker(
    files: BrokerFiles, redis_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeClock]]:
    """The app on the shared Redis with fast failure handling and a hand-moved clock."""
    clock = FakeClock()
    async with running_broker(files.settings(redis_url, **FAST), clock=clock) as client:
        yield client, clock


@pytest.mark.parametrize("fault", ["error503", "hang", "reset"])
async def test_issuer_outage_is_invisible_while_a_cached_token_can_serve(
    broker: tuple[httpx.AsyncClient, FakeClock],
    files: BrokerFiles,
    issuer: OidcProvider,
    fault: Any,
) -> None:
    """Issuer down past the retry deadline: cached tokens serve (0 failures), then 503, then
    recovery without a restart once the issuer is back.
    """
    client, clock = broker
    key = files.keys["airflow"]
    first = await _token(client, key)
    assert first.status_code == 200
    cached = first.json()["access_token"]
    issuer.proxy.set_fault(fault, delay_seconds=3)
    # Past the refresh point: every request triggers a background refresh that fails.
    clock.advance(2500)
    failures = 0
    started = time.monotonic()
    for _ in range(6):
        for response in await _burst(client, key, 10, min_ttl=600):
            failures += response.status_code != 200
            assert response.json().get("access_token", cached) == cached
        await asyncio.sleep(0.25)
    assert failures == 0
    assert time.monotonic() - started < 15
    # The cached token now has less life than the caller needs, and the issuer is still down.
    clock.advance(1000)  # 100 s left, min_ttl 600
    refused = await _token(client, key, min_ttl=600)
    assert refused.status_code == 503
    assert refused.json()["error"] == "temporarily_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    # Never an expired token, whatever is asked for.
    clock.advance(200)
    expired = await _token(client, key)
    assert expired.status_code == 503
    issuer.proxy.set_fault(None)
    recovered = None
    for _ in range(40):  # the circuit may still be open for up to 0.5 s
        recovered = await _token(client, key, min_ttl=600)
        if recovered.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert recovered is not None
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["access_token"] != cached
    _, claims = verify_access_token(recovered.json()["access_token"], issuer.jwks())
    assert claims["exp"] > time.time() + 600


async def test_issuer_429_with_retry_after_is_waited_out(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """A 429 with Retry-After 1: the broker waits about a second and retries; one caller, one
    success, two token requests.
    """
    issuer.proxy.set_fault("error429", times=1, retry_after=1)
    settings = files.settings(**{**FAST, "upstream_deadline_seconds": 5.0})
    async with running_broker(settings) as client:
        started = time.monotonic()
        response = await _token(client, files.keys["airflow"])
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert issuer.proxy.token_requests == 2
    assert elapsed >= 0.9


async def test_issuer_refusal_is_not_retried_and_is_counted(
    tmp_path: Path, issuer: OidcProvider
) -> None:
    """A wrong client secret: one issuer request, a 502 naming invalid_client, and a metric."""
    files = write_config(tmp_path, issuer)
    (tmp_path / "broker-basic.secret").write_text("wrong-secret")
    async with running_broker(files.settings(**FAST)) as client:
        before = await client.get("/metrics")
        response = await _token(client, files.keys["airflow"])
        after = await client.get("/metrics")
    assert response.status_code == 502
    assert "invalid_client" in response.json()["error_description"]
    assert issuer.proxy.token_requests == 1
    series = 'token_broker_issuer_refusals_total{error="invalid_client",profile="ingestion"}'
    assert _value(after.text, series) == _value(before.text, series) + 1


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def test_redis_killed_mid_load_costs_no_request(
    files: BrokerFiles, issuer: OidcProvider, own_redis: RedisServer
) -> None:
    """Redis SIGKILLed under load and restarted: 0 failed requests; /readyz says degraded, then
    ready again without a restart, and new tokens reach Redis again.
    """
    key = files.keys["airflow"]
    settings = files.settings(own_redis.url, **FAST)
    async with running_broker(settings) as client:
        assert await _ready(client) == "ready"
        outcomes: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            for round_ in range(400):  # bounded; ends early when told
                if stop.is_set():
                    return
                scopes = ["read"] if round_ % 2 else None
                body = {"scopes": scopes} if scopes else {}
                responses = await _burst(client, key, 5, **body)
                outcomes.extend(r.status_code for r in responses)
                await asyncio.sleep(0.01)

        loader = asyncio.create_task(load())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(own_redis.kill)
        states = [await _ready(client) for _ in range(2)]
        # A scope set never asked for before: an exchange while Redis is gone.
        during = await _token(client, key, scopes=["write"])
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_redis.start)
        recovered = False
        for _ in range(50):
            if await _ready(client) == "ready":
                recovered = True
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(loader, timeout=30)
        # After recovery a fresh exchange is shared through Redis again.
        again = await _token(client, key, scopes=["ingestion"])
    assert "degraded" in states
    assert during.status_code == 200, during.text
    assert recovered
    assert again.status_code == 200
    assert len(outcomes) >= 50
    assert [s for s in outcomes if s != 200] == []
    keys = await asyncio.to_thread(_redis_keys, own_redis)
    assert any(k.startswith("token-broker:v1:token:") for k in keys)


def _redis_keys(server: RedisServer) -> list[str]:
    import redis  # noqa: PLC0415 - sync client for a one-off look

    client = redis.Redis.from_url(server.url)
    try:
        return [k.decode() for k in client.scan_iter(count=100)]
    finally:
        client.close()


async def test_callers_are_rate_limited_across_replicas(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """A caller limit shared through Redis: 5 per minute over two replicas, then 429 with
    Retry-After; another caller is unaffected.
    """
    settings = files.settings(redis_url, rate_limit_per_minute=5)
    async with running_broker(settings) as a, running_broker(settings) as b:
        statuses = [(await _token(c, files.keys["airflow"])).status_code for c in (a, b, a, b, a)]
        limited = await _token(b, files.keys["airflow"])
        other = await _token(a, files.keys["reader"])
    assert statuses == [200] * 5
    assert limited.status_code == 429
    assert limited.json()["error"] == "temporarily_unavailable"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert other.status_code == 200


async def test_rate_limit_falls_back_to_the_replica_when_redis_is_down(
    files: BrokerFiles, issuer: OidcProvider, own_redis: RedisServer
) -> None:
    """With Redis gone the caller limit still holds, per replica."""
    settings = files.settings(own_redis.url, rate_limit_per_minute=3, **FAST)
    async with running_broker(settings) as client:
        own_redis.kill()
        statuses = [(await _token(client, files.keys["airflow"])).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_repeated_failed_authentication_is_throttled_per_address(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """After 3 failed authentications the address gets 429 even with a valid key; no issuer."""
    settings = files.settings(auth_failures_per_minute=3)
    wrong = "tbk_0000_" + "x" * 30
    async with running_broker(settings) as client:
        failed = [(await _token(client, wrong)).status_code for _ in range(3)]
        blocked = await _token(client, files.keys["airflow"])
        facade = await client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "airflow",
                "client_secret": files.keys["airflow"],
            },
        )
    assert failed == [401, 401, 401]
    assert blocked.status_code == 429
    assert "retry-after" in blocked.headers
    assert facade.status_code == 429
    assert issuer.proxy.token_requests == 0


async def test_oversized_headers_are_refused_with_431(files: BrokerFiles) -> None:
    """Too many header fields, or too many header bytes: 431 with an RFC 6749 body."""
    async with running_broker(files.settings(max_headers=16, max_header_bytes=2048)) as client:
        many = await client.post(
            "/v1/token",
            json={"profile": "ingestion"},
            headers={**bearer(files.keys["airflow"]), **{f"x-h{i}": "v" for i in range(20)}},
        )
        big = await client.post(
            "/v1/token",
            json={"profile": "ingestion"},
            headers={**bearer(files.keys["airflow"]), "x-big": "v" * 3000},
        )
    for response in (many, big):
        assert response.status_code == 431
        assert response.json()["error"] == "invalid_request"


async def test_metrics_count_handouts_by_configured_names_only(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """/metrics counts issued and denied hand-outs; a made-up profile name never becomes a label."""
    async with running_broker(files.settings(redis_url)) as client:
        await _token(client, files.keys["airflow"])
        await _token(client, files.keys["airflow"])
        await _token(client, files.keys["reader"], scopes=["write"])
        await client.post(
            "/v1/token", json={"profile": "made-up-profile"}, headers=bearer(files.keys["airflow"])
        )
        text = (await client.get("/metrics")).text
    assert _value(text, 'token_broker_handouts_total{outcome="issued",profile="ingestion"}') >= 2
    assert _value(text, 'token_broker_handouts_total{outcome="denied",profile="ingestion"}') >= 1
    assert 'profile="(unknown)"' in text
    assert "made-up-profile" not in text
    assert _value(text, 'token_broker_cache_lookups_total{layer="local",result="hit"}') >= 1
    assert _value(text, "token_broker_redis_up") == 1


async def test_redis_and_issuer_down_together_still_serve_a_token_with_life_left(
    files: BrokerFiles, issuer: OidcProvider, own_redis: RedisServer
) -> None:
    """Past the L1 refresh point with Redis gone and the issuer failing, a token that still
    satisfies min_ttl is served from the replica's fallback; once it does not, 503.
    """
    clock = FakeClock()
    key = files.keys["airflow"]
    async with running_broker(files.settings(own_redis.url, **FAST), clock=clock) as client:
        first = (await _token(client, key)).json()["access_token"]
        await asyncio.to_thread(own_redis.kill)
        issuer.proxy.set_fault("error503")
        clock.advance(2500)  # past the refresh point: L1 is empty, L2 unreachable
        served = await _token(client, key, min_ttl=600)
        clock.advance(600)  # 500 s left
        refused = await _token(client, key, min_ttl=600)
    assert served.status_code == 200, served.text
    assert served.json()["access_token"] == first
    assert refused.status_code == 503


async def test_redis_restarted_empty_does_not_empty_the_replicas_l1(
    files: BrokerFiles, issuer: OidcProvider, own_redis: RedisServer
) -> None:
    """No invalidation was missed while Redis was away: the L1 keeps serving after it returns,
    so replicas do not all go to the issuer at once.
    """
    key = files.keys["airflow"]
    async with running_broker(files.settings(own_redis.url, **FAST)) as client:
        first = (await _token(client, key)).json()["access_token"]
        await asyncio.to_thread(own_redis.kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_redis.start)
        for _ in range(50):  # until the replica has re-subscribed and Redis answers
            if await _ready(client) == "ready":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # > redis_probe_seconds: the listener is back
        again = await _token(client, key)
    assert again.json()["access_token"] == first
    assert again.headers["token-broker-source"] == "cache"
    assert issuer.proxy.token_requests == 1
