"""End-to-end issuance against the real oidc-provider and a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support import OidcProvider, verify_access_token
from tests.support.broker import BrokerFiles, bearer, running_broker, write_config
from tests.support.clock import FakeClock


async def _token(client: httpx.AsyncClient, key: str, **body: object) -> httpx.Response:
    return await client.post(
        "/v1/token", json={"profile": "ingestion", **body}, headers=bearer(key)
    )


@pytest.mark.parametrize(
    ("client_id", "auth_method"),
    [
        ("broker-basic", "client_secret_basic"),
        ("broker-post", "client_secret_post"),
        ("broker-jwt", "private_key_jwt"),
    ],
)
async def test_each_auth_method_yields_a_verifiable_token(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, client_id: str, auth_method: str
) -> None:
    """Every client auth method gets a JWT whose signature verifies against the issuer's JWKS."""
    files = write_config(tmp_path, issuer, client_id=client_id, auth_method=auth_method)
    async with running_broker(files.settings(redis_url)) as client:
        response = await _token(client, files.keys["airflow"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["cache-control"] == "no-store"
    assert body["token_type"] == "Bearer"
    assert body["profile"] == "ingestion"
    assert body["max_ttl"] == 4 * 3600
    assert 3500 < body["expires_in"] <= 3600
    _, claims = verify_access_token(body["access_token"], issuer.jwks())
    assert claims["client_id"] == client_id
    assert claims["iss"] == issuer.issuer
    assert set(claims["scope"].split()) == set(issuer.scopes)
    sent = issuer.proxy.token_request_log[-1]
    if auth_method == "client_secret_basic":
        assert (sent.header("Authorization") or "").startswith("Basic ")
        assert "client_secret" not in sent.form
    elif auth_method == "client_secret_post":
        assert sent.header("Authorization") is None
        assert sent.form["client_secret"]
    else:
        assert sent.form["client_assertion_type"].endswith("jwt-bearer")
        assert "client_secret" not in sent.form


async def test_scope_and_resource_are_sent_together(
    tmp_path: Path, issuer: OidcProvider, redis_url: str
) -> None:
    """Setting scopes does not drop the profile's resource or extra parameters."""
    files = write_config(
        tmp_path, issuer, profile_extra={"resource": issuer.resource, "extra_params": {"x": "1"}}
    )
    async with running_broker(files.settings(redis_url)) as client:
        response = await _token(client, files.keys["reader"])
    assert response.status_code == 200, response.text
    form = issuer.proxy.token_request_log[-1].form
    assert (form["scope"], form["resource"], form["x"]) == ("read", issuer.resource, "1")
    _, claims = verify_access_token(response.json()["access_token"], issuer.jwks())
    assert claims["aud"] == issuer.resource


@pytest.mark.parametrize("with_redis", [True, False])
async def test_cold_stampede_makes_one_issuer_request(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str, with_redis: bool
) -> None:
    """200 concurrent requests on a cold cache cause exactly one exchange with the issuer."""
    issuer.proxy.set_fault("delay", delay_seconds=0.3)
    settings = files.settings(redis_url if with_redis else None)
    async with running_broker(settings) as client:
        responses = await asyncio.gather(
            *(_token(client, files.keys["airflow"]) for _ in range(200))
        )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["access_token"] for r in responses}) == 1
    assert issuer.proxy.token_requests == 1


async def test_second_request_is_served_from_cache(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """A repeat request gets the cached token and the issuer is not asked again."""
    async with running_broker(files.settings(redis_url)) as client:
        first = await _token(client, files.keys["airflow"])
        second = await _token(client, files.keys["airflow"])
    assert first.headers["token-broker-source"] == "issuer"
    assert second.headers["token-broker-source"] == "cache"
    assert first.json()["access_token"] == second.json()["access_token"]
    assert issuer.proxy.token_requests == 1


async def test_scope_sets_are_cached_apart(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """A narrower scope set is a different token; each is fetched once."""
    async with running_broker(files.settings(redis_url)) as client:
        full = await _token(client, files.keys["airflow"])
        narrow = await _token(client, files.keys["reader"])
        again = await _token(client, files.keys["airflow"], scopes=["read"])
    assert narrow.json()["scope"] == "read"
    assert again.json()["access_token"] == narrow.json()["access_token"]
    assert full.json()["access_token"] != narrow.json()["access_token"]
    assert issuer.proxy.token_requests == 2


async def test_scope_escalation_is_refused_without_asking_the_issuer(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """Asking beyond the grant is a 403 invalid_scope and reaches no issuer."""
    async with running_broker(files.settings(redis_url)) as client:
        response = await _token(client, files.keys["reader"], scopes=["read", "write"])
        idle = await _token(client, files.keys["idle"])
    assert response.status_code == 403
    assert response.json()["error"] == "invalid_scope"
    assert idle.status_code == 403
    assert idle.json()["error"] == "unauthorized_client"
    assert issuer.proxy.token_requests == 0


async def test_refresh_ahead_serves_cached_token_while_refreshing(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """Past the refresh point a caller gets the cached token at once; one refresh runs behind it."""
    clock = FakeClock()
    async with running_broker(files.settings(redis_url), clock=clock) as client:
        first = (await _token(client, files.keys["airflow"])).json()["access_token"]
        clock.advance(2500)  # past 2/3 of a 3600 s token
        # The issuer now hangs: a caller that waited on it would not get an answer.
        issuer.proxy.set_fault("hang", delay_seconds=20)
        during = await asyncio.gather(*(_token(client, files.keys["airflow"]) for _ in range(20)))
        assert {r.json()["access_token"] for r in during} == {first}
        assert {r.headers["token-broker-source"] for r in during} == {"cache"}
        assert await asyncio.to_thread(issuer.proxy.wait_for_token_requests, 2)
        # Releases the hung request, which fails; the refresh retries it behind the callers.
        issuer.proxy.set_fault(None)
        assert await asyncio.to_thread(issuer.proxy.wait_for_token_requests, 3)
        for _ in range(50):
            fresh = await _token(client, files.keys["airflow"])
            if fresh.json()["access_token"] != first:
                break
            await asyncio.sleep(0.05)
    assert fresh.json()["access_token"] != first
    assert fresh.headers["token-broker-source"] == "cache"
    assert issuer.proxy.token_requests == 3


async def test_min_ttl_refetches_when_cached_token_is_too_short(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """A cached token with less life than min_ttl is not handed out; a fresh one is fetched."""
    clock = FakeClock()
    async with running_broker(files.settings(redis_url), clock=clock) as client:
        first = (await _token(client, files.keys["airflow"])).json()
        clock.advance(1000)  # 2600 s left, before the refresh point
        relaxed = await _token(client, files.keys["airflow"], min_ttl="40m")
        strict = await _token(client, files.keys["airflow"], min_ttl="50m")
    assert relaxed.json()["access_token"] == first["access_token"]
    assert relaxed.headers["token-broker-source"] == "cache"
    assert strict.status_code == 200
    assert strict.json()["access_token"] != first["access_token"]
    assert strict.json()["expires_in"] >= 3000
    assert issuer.proxy.token_requests == 2


async def test_min_ttl_beyond_issuer_lifetime_is_a_clear_400(
    tmp_path: Path, issuer: OidcProvider, redis_url: str
) -> None:
    """min_ttl beyond the issuer's token lifetime: a 400 naming the lifetime, no short token."""
    files = write_config(
        tmp_path, issuer, callers={"airflow": {"grants": [{"profile": "ingestion"}]}}
    )
    async with running_broker(files.settings(redis_url)) as client:
        response = await _token(client, files.keys["airflow"], min_ttl="2h")
        again = await _token(client, files.keys["airflow"], min_ttl=7200)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert "3600" in body["error_description"]
    assert "access_token" not in body
    assert again.status_code == 400
    # The token fetched to learn the lifetime is cached: asking again costs no exchange.
    assert issuer.proxy.token_requests == 1


async def test_redis_holds_no_token_in_plain_text(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """Every Redis key and value is free of the token, its parts and the configured secrets."""
    async with running_broker(files.settings(redis_url)) as client:
        token = (await _token(client, files.keys["airflow"])).json()["access_token"]
    header, payload, signature = token.split(".")
    needles = [token, header, payload, signature, *files.secrets]
    store = aioredis.Redis.from_url(redis_url)
    try:
        keys = await store.keys("*")
        assert keys, "the token should be cached in Redis"
        for key in keys:
            dumped = await store.dump(key) or b""
            value = await store.get(key) if await store.type(key) == b"string" else b""
            for needle in needles:
                raw = needle.encode()
                assert raw not in key
                assert raw not in dumped
                assert raw not in (value or b"")
            ttl = await store.pttl(key)
            assert 0 < ttl <= 3600 * 1000
    finally:
        await store.aclose()


async def test_oidc_discovery_is_refetched_after_failure(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """A failed discovery is not cached: the next request discovers again and succeeds."""
    issuer.proxy.set_fault("error503", fault_all=True, times=1)
    # One attempt per exchange, so the failure reaches the caller instead of being retried.
    async with running_broker(files.settings(upstream_attempts=1)) as client:
        failed = await _token(client, files.keys["airflow"])
        recovered = await _token(client, files.keys["airflow"])
    assert failed.status_code == 503
    assert failed.json()["error"] == "temporarily_unavailable"
    assert "retry-after" in failed.headers
    assert recovered.status_code == 200


async def test_a_failed_discovery_is_retried_within_the_same_request(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """With retries on, one 503 from discovery costs the caller a retry, not an error."""
    issuer.proxy.set_fault("error503", fault_all=True, times=1)
    async with running_broker(files.settings()) as client:
        response = await _token(client, files.keys["airflow"])
    assert response.status_code == 200, response.text
    assert issuer.proxy.token_requests == 1


async def test_issuer_refusal_is_a_502_naming_its_error(
    tmp_path: Path, issuer: OidcProvider
) -> None:
    """A wrong client secret: the issuer says invalid_client, the caller gets a 502 naming it."""
    files = write_config(tmp_path, issuer)
    secret_file = tmp_path / "broker-basic.secret"
    secret_file.write_text("wrong-secret")
    async with running_broker(files.settings()) as client:
        response = await _token(client, files.keys["airflow"])
    assert response.status_code == 502
    assert response.json()["error"] == "server_error"
    assert "invalid_client" in response.json()["error_description"]
    assert "wrong-secret" not in response.text


async def test_rotated_secret_file_is_used_without_restart(
    tmp_path: Path, issuer: OidcProvider
) -> None:
    """The client secret file is read at each exchange, so a rotation applies at once."""
    files = write_config(tmp_path, issuer)
    secret_file = tmp_path / "broker-basic.secret"
    good = secret_file.read_text()
    secret_file.write_text("stale-secret")
    async with running_broker(files.settings()) as client:
        refused = await _token(client, files.keys["airflow"])
        secret_file.write_text(good)
        accepted = await _token(client, files.keys["airflow"])
    assert (refused.status_code, accepted.status_code) == (502, 200)


async def test_openapi_schema_describes_both_token_endpoints(files: BrokerFiles) -> None:
    """The served OpenAPI document names both token endpoints and their error bodies."""
    async with running_broker(files.settings()) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/v1/token", "/oauth2/token", "/healthz", "/readyz"} <= set(paths)
    assert "401" in paths["/v1/token"]["post"]["responses"]
    body = paths["/oauth2/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in body
