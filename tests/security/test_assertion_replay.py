"""Assertion replay: a workload JWT of a ``replay: refuse`` issuer is accepted once.

A stolen RFC 7523 assertion must not buy a second token: not at the same replica, not at
another one sharing Redis, not while Redis is down, and not through the other endpoint
(``client_assertion`` at ``/oauth2/token`` is 400 ``invalid_grant``, the same JWT as Bearer
at ``/v1/token`` a 401). Kubernetes projected tokens are reusable by design and stay so
unless their issuer says otherwise. Tokens are signed by keys the tests generate and served
from a loopback JWKS endpoint (``tests/support/workload.py``); Redis and the issuer are real.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from joserfc.jwk import RSAKey

from tests.integration.test_no_leaks import redis_texts
from tests.support import OidcProvider, RedisServer
from tests.support.audit_trail import AuditTrail
from tests.support.broker import (
    BrokerFiles,
    bearer,
    running_broker,
    write_config,
)
from tests.support.workload import WorkloadIssuer

AUDIENCE = "https://token-broker.example.com"
SUBJECT = "repo:acme/data:ref:refs/heads/main"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LEEWAY = 30
# Redis failures are noticed in a quarter of a second and probed again five times a second.
FAST: dict[str, Any] = {"redis_timeout_seconds": 0.25, "redis_probe_seconds": 0.2}
WAIT_SECONDS = 15.0
T = TypeVar("T")


@pytest.fixture
def ci() -> Iterator[WorkloadIssuer]:
    """A loopback issuer of workload JWTs (a CI system, or a cluster)."""
    issuer = WorkloadIssuer()
    try:
        yield issuer
    finally:
        issuer.stop()


def generic_config(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, **trust: Any
) -> BrokerFiles:
    """Caller ``deploy`` bound to SUBJECT on the generic trusted issuer ``ci``."""
    return write_config(
        tmp_path,
        issuer,
        trusted_issuers={"ci": {"issuer": ci.url, "audience": AUDIENCE, "leeway": LEEWAY, **trust}},
        callers={
            "deploy": {
                "workload": {"issuer": "ci", "subject": SUBJECT},
                "grants": [{"profile": "ingestion"}],
            }
        },
    )


def cluster_config(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer, **trust: Any
) -> BrokerFiles:
    """Caller ``pods`` bound to ingestion/runner on the kubernetes trusted issuer ``cluster``."""
    return write_config(
        tmp_path,
        issuer,
        trusted_issuers={
            "cluster": {"kind": "kubernetes", "issuer": cluster.url, "audience": AUDIENCE, **trust}
        },
        callers={
            "pods": {
                "kubernetes": {"namespace": "ingestion", "service_account": "runner"},
                "grants": [{"profile": "ingestion"}],
            }
        },
    )


def assertion(
    ci: WorkloadIssuer,
    *,
    jti: object = "fresh",
    key: RSAKey | None = None,
    **claims: Any,
) -> str:
    """A CI-style workload JWT for SUBJECT; ``jti="fresh"`` draws a new one, None omits it."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ci.url,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    if jti is not None:
        body["jti"] = str(uuid.uuid4()) if jti == "fresh" else jti
    return ci.sign(body, key=key, kid=ci.rsa.kid or True)


async def bounded(work: Awaitable[T]) -> T:
    """``work``, failing the test instead of hanging."""
    return await asyncio.wait_for(work, timeout=WAIT_SECONDS)


async def oauth2(client: httpx.AsyncClient, jwt: str) -> httpx.Response:
    """POST the client-credentials grant with ``jwt`` as client_assertion."""
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": jwt,
    }
    return await bounded(client.post("/oauth2/token", data=form))


async def v1(client: httpx.AsyncClient, jwt: str) -> httpx.Response:
    """POST /v1/token with ``jwt`` as Bearer credential."""
    return await bounded(
        client.post("/v1/token", json={"profile": "ingestion"}, headers=bearer(jwt))
    )


def assert_invalid_grant(response: httpx.Response, reason: str, jwt: str) -> None:
    """A 400 invalid_grant naming ``reason``, with no WWW-Authenticate and no part of ``jwt``."""
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    assert reason in response.json()["error_description"]
    assert "www-authenticate" not in response.headers
    for part in jwt.split("."):
        assert part not in response.text


async def test_a_replayed_client_assertion_is_invalid_grant_with_no_issuer_call(
    tmp_path: Path,
    issuer: OidcProvider,
    ci: WorkloadIssuer,
    redis_url: str,
    audit_trail: AuditTrail,
) -> None:
    """Attack: the same client_assertion twice; the second is 400 invalid_grant, 0 calls."""
    files = generic_config(tmp_path, issuer, ci)
    stolen = assertion(ci)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        first = await oauth2(client, stolen)
        calls = issuer.proxy.token_requests
        replayed = await oauth2(client, stolen)
    assert first.status_code == 200, first.text
    assert_invalid_grant(replayed, "already used", stolen)
    assert issuer.proxy.token_requests == calls
    denied = [line for line in audit_trail.lines() if line["outcome"] == "denied"]
    assert [line["reason"] for line in denied] == ["invalid_grant"]


async def test_a_used_assertion_is_refused_through_the_other_endpoint(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """Attack: replay a used assertion as Bearer at /v1/token (401), or the other way (400)."""
    files = generic_config(tmp_path, issuer, ci)
    by_assertion, by_bearer = assertion(ci), assertion(ci)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        assert (await oauth2(client, by_assertion)).status_code == 200
        as_bearer = await v1(client, by_assertion)
        assert (await v1(client, by_bearer)).status_code == 200
        as_assertion = await oauth2(client, by_bearer)
    assert as_bearer.status_code == 401, as_bearer.text
    assert as_bearer.json()["error"] == "invalid_client"
    assert "already used" in as_bearer.json()["error_description"]
    assert_invalid_grant(as_assertion, "already used", by_bearer)


async def test_a_replay_to_another_replica_is_refused_through_redis(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """Attack: the used assertion sent to a second replica on the same Redis; refused."""
    files = generic_config(tmp_path, issuer, ci)
    settings = files.settings(redis_url, **FAST)
    stolen = assertion(ci)
    async with running_broker(settings) as first, running_broker(settings) as second:
        used = await oauth2(first, stolen)
        replayed = await oauth2(second, stolen)
        replayed_as_bearer = await v1(second, stolen)
    assert used.status_code == 200, used.text
    assert_invalid_grant(replayed, "already used", stolen)
    assert replayed_as_bearer.status_code == 401


async def test_replays_are_refused_by_this_replica_while_redis_is_down(
    tmp_path: Path,
    issuer: OidcProvider,
    ci: WorkloadIssuer,
    redis_url: str,
    redis_server: RedisServer,
) -> None:
    """Attack: replay while Redis hangs; the in-process record refuses it (before and during)."""
    files = generic_config(tmp_path, issuer, ci)
    before, during = assertion(ci), assertion(ci)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        assert (await oauth2(client, before)).status_code == 200
        redis_server.pause()
        try:
            used_before = await oauth2(client, before)
            first = await oauth2(client, during)
            replayed = await oauth2(client, during)
            ready = (await bounded(client.get("/readyz"))).json()
        finally:
            redis_server.resume()
        after = await oauth2(client, during)
    assert ready["status"] == "degraded"  # Redis really was out of the picture
    assert_invalid_grant(used_before, "already used", before)
    assert first.status_code == 200, first.text
    assert_invalid_grant(replayed, "already used", during)
    assert_invalid_grant(after, "already used", during)


async def test_an_assertion_without_jti_is_refused(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """Attack: drop the jti so there is nothing to remember; refused at both endpoints."""
    files = generic_config(tmp_path, issuer, ci)
    bare = assertion(ci, jti=None)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        as_assertion = await oauth2(client, bare)
        as_bearer = await v1(client, bare)
    assert_invalid_grant(as_assertion, "no jti", bare)
    assert as_bearer.status_code == 401
    assert "no jti" in as_bearer.json()["error_description"]


async def test_require_jti_false_accepts_a_jti_less_token_each_time(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """require_jti: false: without a jti there is nothing to track, so each use is accepted."""
    files = generic_config(tmp_path, issuer, ci, require_jti=False)
    bare = assertion(ci, jti=None)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        answers = [await oauth2(client, bare) for _ in range(3)]
        tracked = assertion(ci)
        assert (await oauth2(client, tracked)).status_code == 200
        replayed = await oauth2(client, tracked)
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert_invalid_grant(replayed, "already used", tracked)


async def test_an_oversized_or_non_string_jti_is_refused_without_echo(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """Attack: a huge or non-string jti (a store-filling or type-confusion probe); refused."""
    files = generic_config(tmp_path, issuer, ci)
    huge = "J" * 257
    long_one = assertion(ci, jti=huge)
    typed = assertion(ci, jti=7)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        too_long = await oauth2(client, long_one)
        not_string = await oauth2(client, typed)
    assert_invalid_grant(too_long, "1 to 256 characters", long_one)
    assert huge[:16] not in too_long.text
    assert_invalid_grant(not_string, "not a string", typed)


async def test_kubernetes_tokens_may_be_presented_again_by_default(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """A projected SA token (with a jti, as 1.30+ mints it) is reusable: each use succeeds."""
    files = cluster_config(tmp_path, issuer, ci)
    token = ci.mint(audience=AUDIENCE)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        answers = [await oauth2(client, token) for _ in range(3)]
        answers += [await v1(client, token) for _ in range(3)]
    assert [r.status_code for r in answers] == [200] * 6


async def test_a_cluster_with_replay_refuse_accepts_each_token_once(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """replay: refuse on a kubernetes issuer: a reused projected token is refused."""
    files = cluster_config(tmp_path, issuer, ci, replay="refuse")
    token = ci.mint(audience=AUDIENCE)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        first = await oauth2(client, token)
        again = await oauth2(client, token)
    assert first.status_code == 200, first.text
    assert_invalid_grant(again, "already used", token)


async def test_refused_tokens_do_not_use_up_their_jti(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """Attack: burn a victim's jti with a forged or unbound token; the real one still works."""
    files = generic_config(tmp_path, issuer, ci)
    jti = str(uuid.uuid4())
    forged = assertion(ci, jti=jti, key=RSAKey.generate_key(2048))
    unbound = assertion(ci, jti=jti, sub="repo:acme/other:ref:refs/heads/main")
    expired = assertion(ci, jti=jti, iat=int(time.time()) - 900, exp=int(time.time()) - 600)
    genuine = assertion(ci, jti=jti)
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        refusals = [await oauth2(client, jwt) for jwt in (forged, unbound, expired)]
        accepted = await oauth2(client, genuine)
    assert [(r.status_code, r.json()["error"]) for r in refusals] == [(401, "invalid_client")] * 3
    assert "signature is invalid" in refusals[0].json()["error_description"]
    assert "no caller is bound" in refusals[1].json()["error_description"]
    assert accepted.status_code == 200, accepted.text


async def test_redis_holds_no_jti_or_token_in_plain_text(
    tmp_path: Path, issuer: OidcProvider, ci: WorkloadIssuer, redis_url: str
) -> None:
    """Attack: read Redis for assertions or their ids; only hashes, expiring with the token."""
    files = generic_config(tmp_path, issuer, ci)
    jtis = [str(uuid.uuid4()) for _ in range(3)]
    jwts = [assertion(ci, jti=jti) for jti in jtis]
    async with running_broker(files.settings(redis_url, **FAST)) as client:
        for jwt in jwts:
            assert (await oauth2(client, jwt)).status_code == 200
    secrets = [*jtis, *(part for jwt in jwts for part in jwt.split(".")), SUBJECT]
    for where, text in redis_texts(redis_url):
        for secret in secrets:
            assert secret.encode() not in text, where
            assert secret.encode().hex().encode() not in text, where
    reader = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        names = sorted(reader.scan_iter(match="token-broker:v1:jti:*", count=1000))
        expected = sorted(
            b"token-broker:v1:jti:" + hashlib.sha256(f"ci\0{jti}".encode()).hexdigest().encode()
            for jti in jtis
        )
        ttls = [reader.pttl(name) / 1000 for name in names]
    finally:
        reader.close()
    assert names == expected
    # exp (300 s) + leeway - the few seconds the test took.
    assert all(300 + LEEWAY - 30 < ttl <= 300 + LEEWAY for ttl in ttls), ttls
