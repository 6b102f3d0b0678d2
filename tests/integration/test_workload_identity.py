"""Workload identity: Kubernetes service-account JWTs and other trusted issuers as callers.

Tokens are signed by keys the tests generate and served from a loopback JWKS endpoint
(``tests/support/workload.py``) with real projected-token claim shapes; the verification
code under test is the broker's own, running in the real app against the real issuer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.observe.logs import JsonFormatter
from tests.support import OidcProvider, verify_access_token
from tests.support.audit_trail import AuditTrail
from tests.support.broker import (
    BrokerFiles,
    bearer,
    running_broker,
    write_config,
)
from tests.support.workload import WorkloadIssuer, forge_hmac_with_public_key, forge_unsigned

AUDIENCE = "token-broker"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def cluster() -> Iterator[WorkloadIssuer]:
    """A loopback stand-in for a cluster's service-account issuer."""
    issuer = WorkloadIssuer()
    try:
        yield issuer
    finally:
        issuer.stop()


def cluster_config(
    tmp_path: Path,
    issuer: OidcProvider,
    cluster: WorkloadIssuer,
    *,
    trust: dict[str, Any] | None = None,
    callers: dict[str, dict[str, Any]] | None = None,
) -> BrokerFiles:
    """Profile ``ingestion``; caller ``pods`` bound to ingestion/runner on the cluster."""
    return write_config(
        tmp_path,
        issuer,
        trusted_issuers={
            "cluster": {
                "kind": "kubernetes",
                "issuer": cluster.url,
                "audience": AUDIENCE,
                **(trust or {}),
            }
        },
        callers=callers
        or {
            "pods": {
                "kubernetes": {"namespace": "ingestion", "service_account": "runner"},
                "grants": [{"profile": "ingestion", "scopes": ["ingestion"]}],
            },
            "airflow": {"grants": [{"profile": "ingestion"}]},
        },
    )


@pytest.fixture
async def broker(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with the default cluster config, in-process."""
    files = cluster_config(tmp_path, issuer, cluster)
    async with running_broker(files.settings()) as client:
        yield client


async def _token(client: httpx.AsyncClient, credential: str) -> httpx.Response:
    return await client.post("/v1/token", json={"profile": "ingestion"}, headers=bearer(credential))


async def test_projected_service_account_token_gets_a_token(
    broker: httpx.AsyncClient,
    issuer: OidcProvider,
    cluster: WorkloadIssuer,
    caplog: pytest.LogCaptureFixture,
    audit_trail: AuditTrail,
) -> None:
    """A valid projected SA token authenticates as the bound caller and gets its grant."""
    caplog.set_level(logging.INFO)
    credential = cluster.mint()
    response = await _token(broker, credential)
    assert response.status_code == 200, response.text
    body = response.json()
    _, claims = verify_access_token(body["access_token"], issuer.jwks())
    assert claims["scope"] == "ingestion"
    issued = [line for line in audit_trail.lines() if line["outcome"] == "issued"]
    assert len(issued) == 1
    assert issued[0]["caller"] == "pods"
    assert issued[0]["credential"] == "jwt:cluster"
    assert issued[0]["subject"] == "system:serviceaccount:ingestion:runner pod=runner-7d9f8-abcde"
    rendered = "".join(JsonFormatter().format(r) for r in caplog.records) + audit_trail.text()
    assert credential not in rendered
    assert body["access_token"] not in rendered


async def test_es256_tokens_and_discovery_are_supported(
    broker: httpx.AsyncClient, cluster: WorkloadIssuer
) -> None:
    """An ES256-signed token verifies; keys came through discovery, fetched once."""
    first = await _token(broker, cluster.sign(cluster.claims(), key=cluster.ec))
    second = await _token(broker, cluster.mint())
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert cluster.fetches == {"discovery": 1, "jwks": 1}


def _expired(cluster: WorkloadIssuer) -> str:
    return cluster.mint(issued_ago=7200, lifetime=3600)


def _wrong_audience(cluster: WorkloadIssuer) -> str:
    return cluster.mint(audience=["https://kubernetes.default.svc"])


def _not_yet_valid(cluster: WorkloadIssuer) -> str:
    claims = cluster.claims()
    claims["nbf"] = claims["iat"] = int(time.time()) + 600
    return cluster.sign(claims)


def _no_exp(cluster: WorkloadIssuer) -> str:
    claims = cluster.claims()
    del claims["exp"]
    return cluster.sign(claims)


def _unknown_kid(cluster: WorkloadIssuer) -> str:
    return cluster.sign(cluster.claims(), kid="not-a-published-kid")


def _foreign_key(cluster: WorkloadIssuer) -> str:
    other = WorkloadIssuer()
    try:
        return other.sign(cluster.claims(), kid=cluster.rsa.kid or "")
    finally:
        other.stop()


def _tampered(cluster: WorkloadIssuer) -> str:
    header, _, signature = cluster.mint().split(".")
    other = cluster.sign(cluster.claims(service_account="admin")).split(".")[1]
    return f"{header}.{other}.{signature}"


def _unsigned(cluster: WorkloadIssuer) -> str:
    return forge_unsigned(cluster.claims())


def _hmac_confusion(cluster: WorkloadIssuer) -> str:
    assert isinstance(cluster.rsa.kid, str)
    return forge_hmac_with_public_key(cluster.claims(), cluster.rsa, cluster.rsa.kid)  # type: ignore[arg-type]


def _untrusted_issuer(cluster: WorkloadIssuer) -> str:
    claims = cluster.claims()
    claims["iss"] = "https://evil.example.com"
    return cluster.sign(claims)


def _sub_mismatch(cluster: WorkloadIssuer) -> str:
    claims = cluster.claims()
    claims["sub"] = "system:serviceaccount:ingestion:other"
    return cluster.sign(claims)


def _unbound_account(cluster: WorkloadIssuer) -> str:
    return cluster.mint(namespace="default", service_account="default")


def _not_kubernetes(cluster: WorkloadIssuer) -> str:
    claims = cluster.claims()
    del claims["kubernetes.io"]
    return cluster.sign(claims)


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (_expired, "expired"),
        (_wrong_audience, "audience"),
        (_not_yet_valid, "not valid yet"),
        (_no_exp, "no exp"),
        (_unknown_kid, "key its issuer does not publish"),
        (_foreign_key, "signature is invalid"),
        (_tampered, "signature is invalid"),
        (_unsigned, "unsigned"),
        (_hmac_confusion, "algorithm is not allowed"),
        (_untrusted_issuer, "issuer is not trusted"),
        (_sub_mismatch, "subject does not match"),
        (_unbound_account, "no caller is bound"),
        (_not_kubernetes, "not a Kubernetes service-account token"),
    ],
)
async def test_bad_workload_tokens_get_a_clear_401(
    broker: httpx.AsyncClient, cluster: WorkloadIssuer, forge: Any, reason: str
) -> None:
    """Each kind of bad token is refused with 401 invalid_client naming why, never the token."""
    credential = forge(cluster)
    response = await _token(broker, credential)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["error"] == "invalid_client"
    assert reason in body["error_description"]
    for part in credential.split("."):
        if len(part) > 8:
            assert part not in response.text


async def test_unknown_kids_do_not_make_the_broker_refetch_keys_each_time(
    broker: httpx.AsyncClient, cluster: WorkloadIssuer
) -> None:
    """Made-up kids within the minimum refresh interval cause no JWKS refetch at all."""
    assert (await _token(broker, cluster.mint())).status_code == 200
    for _ in range(5):
        assert (await _token(broker, _unknown_kid(cluster))).status_code == 401
    assert cluster.fetches["jwks"] == 1


async def test_rotated_signing_key_is_picked_up_by_kid(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer
) -> None:
    """A token signed by a key published after the first fetch is accepted after a refetch."""
    files = cluster_config(tmp_path, issuer, cluster)
    # The refetch interval guards against abuse; zero lets the rotation be seen at once.
    async with running_broker(files.settings(jwks_min_refresh_seconds=0)) as client:
        assert (await _token(client, cluster.mint())).status_code == 200
        rotated = cluster.add_key("RSA")
        response = await _token(client, cluster.sign(cluster.claims(), key=rotated))
        unknown = await _token(client, _unknown_kid(cluster))
    assert response.status_code == 200, response.text
    assert unknown.status_code == 401
    assert cluster.fetches["jwks"] == 3


async def test_jwks_from_a_file_without_any_http(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer
) -> None:
    """jwks_file: keys come from the file (e.g. kubectl get --raw /openid/v1/jwks)."""
    (tmp_path / "cluster-jwks.json").write_text(json.dumps(cluster.jwks()))
    files = cluster_config(tmp_path, issuer, cluster, trust={"jwks_file": "cluster-jwks.json"})
    async with running_broker(files.settings()) as client:
        response = await _token(client, cluster.mint())
    assert response.status_code == 200, response.text
    assert cluster.fetches == {"discovery": 0, "jwks": 0}


async def test_explicit_jwks_url_skips_discovery(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer
) -> None:
    """jwks_url: keys are fetched from it directly, discovery is never asked."""
    files = cluster_config(tmp_path, issuer, cluster, trust={"jwks_url": cluster.jwks_url})
    async with running_broker(files.settings()) as client:
        response = await _token(client, cluster.mint())
    assert response.status_code == 200, response.text
    assert cluster.fetches == {"discovery": 0, "jwks": 1}


async def test_unreachable_keys_are_a_503_not_a_401(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer
) -> None:
    """When the issuer's keys were never fetched, a caller gets 503 + Retry-After."""
    files = cluster_config(tmp_path, issuer, cluster)
    cluster.fail = True
    async with running_broker(files.settings()) as client:
        response = await _token(client, cluster.mint())
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert int(response.headers["retry-after"]) > 0


async def test_most_specific_binding_wins_pod_over_service_account(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer
) -> None:
    """A caller bound to one pod name takes that pod's tokens; others fall to the SA caller."""
    files = cluster_config(
        tmp_path,
        issuer,
        cluster,
        callers={
            "runners": {
                "kubernetes": {"namespace": "ingestion", "service_account": "runner"},
                "grants": [{"profile": "ingestion", "scopes": ["read"]}],
            },
            "nightly": {
                "kubernetes": {
                    "namespace": "ingestion",
                    "service_account": "runner",
                    "pod": "nightly-0",
                },
                "grants": [{"profile": "ingestion", "scopes": ["ingestion"]}],
            },
        },
    )
    async with running_broker(files.settings()) as client:
        nightly = await _token(client, cluster.mint(pod="nightly-0"))
        other = await _token(client, cluster.mint(pod="adhoc-1"))
    assert nightly.status_code == 200, nightly.text
    assert nightly.json()["scope"] == "ingestion"
    assert other.status_code == 200, other.text
    assert other.json()["scope"] == "read"


async def test_generic_trusted_issuer_binds_subject_and_required_claims(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer
) -> None:
    """A CI-style issuer: sub binds the caller, required_claims and claims must all match."""
    files = write_config(
        tmp_path,
        issuer,
        trusted_issuers={
            "ci": {
                "issuer": cluster.url,
                "audience": "https://broker.example.com",
                "required_claims": {"repository_owner": "acme"},
                # These tokens carry no jti; one-use assertions are pinned in tests/security.
                "replay": "allow",
            }
        },
        callers={
            "deploy": {
                "workload": {
                    "issuer": "ci",
                    "subject": "repo:acme/data:ref:refs/heads/main",
                    "claims": {"environment": "prod"},
                },
                "grants": [{"profile": "ingestion"}],
            }
        },
    )
    now = int(time.time())
    base = {
        "iss": cluster.url,
        "aud": "https://broker.example.com",
        "sub": "repo:acme/data:ref:refs/heads/main",
        "repository_owner": "acme",
        "environment": "prod",
        "iat": now,
        "exp": now + 300,
    }
    async with running_broker(files.settings()) as client:
        good = await _token(client, cluster.sign(base))
        foreign_owner = await _token(client, cluster.sign({**base, "repository_owner": "evil"}))
        staging = await _token(client, cluster.sign({**base, "environment": "staging"}))
    assert good.status_code == 200, good.text
    assert foreign_owner.status_code == 401
    assert "requires" in foreign_owner.json()["error_description"]
    assert staging.status_code == 401
    assert "no caller is bound" in staging.json()["error_description"]


async def test_rfc7523_client_assertion_at_the_oauth2_facade(
    broker: httpx.AsyncClient, issuer: OidcProvider, cluster: WorkloadIssuer
) -> None:
    """A workload JWT as client_assertion gets an OAuth2 token response."""
    response = await broker.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": cluster.mint(),
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 120
    verify_access_token(body["access_token"], issuer.jwks())


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": "airflow"}, 401, "invalid_client"),
        ({"client_assertion_type": "urn:example:other"}, 400, "invalid_request"),
        ({"client_secret": "x"}, 400, "invalid_request"),
    ],
)
async def test_rfc7523_assertion_misuse_is_refused(
    broker: httpx.AsyncClient,
    cluster: WorkloadIssuer,
    form: dict[str, str],
    status: int,
    error: str,
) -> None:
    """Another client's id, another assertion type or two auth methods are refused."""
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": cluster.mint(),
        **form,
    }
    response = await broker.post("/oauth2/token", data=data)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


async def test_api_keys_still_work_beside_workload_identity(
    tmp_path: Path, issuer: OidcProvider, cluster: WorkloadIssuer
) -> None:
    """The same Bearer header takes an API key; a non-key non-JWT credential is a 401."""
    files = cluster_config(tmp_path, issuer, cluster)
    async with running_broker(files.settings()) as client:
        by_key = await _token(client, files.keys["airflow"])
        garbage = await _token(client, "not-a-credential")
    assert by_key.status_code == 200, by_key.text
    assert garbage.status_code == 401
    assert "neither an API key nor a JWT" in garbage.json()["error_description"]


async def test_workload_token_without_trusted_issuers_is_refused(
    files: BrokerFiles, cluster: WorkloadIssuer
) -> None:
    """With no trusted_issuers configured, a JWT credential gets a 401 saying so."""
    async with running_broker(files.settings()) as client:
        response = await _token(client, cluster.mint())
    assert response.status_code == 401
    assert "not configured" in response.json()["error_description"]
