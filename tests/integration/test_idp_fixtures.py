# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""The backing-service fixtures behave as the broker's integration tests rely on."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis

from tests.support.processes import (
    MockServer,
    OidcProvider,
    RedisServer,
    ensure_node_modules,
    start_mock_server,
)
from tests.support.tokens import make_client_assertion, verify_access_token

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """A plain httpx client that ignores proxy settings from the environment."""
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        yield client


def _token_request(
    http: httpx.Client, provider: OidcProvider, client_id: str, **params: str
) -> httpx.Response:
    client = provider.clients[client_id]
    data = {"grant_type": "client_credentials", **params}
    if client.token_endpoint_auth_method == "client_secret_basic":
        assert client.client_secret is not None
        return http.post(provider.token_endpoint, data=data, auth=(client_id, client.client_secret))
    if client.token_endpoint_auth_method == "client_secret_post":
        assert client.client_secret is not None
        data |= {"client_id": client_id, "client_secret": client.client_secret}
    else:
        assert client.private_key_pem_path is not None
        data |= {
            "client_id": client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": make_client_assertion(
                client_id=client_id,
                audience=provider.token_endpoint,
                private_key_pem=client.private_key_pem_path,
                kid=client.kid,
            ),
        }
    return http.post(provider.token_endpoint, data=data)


def _unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


@pytest.mark.parametrize("client_id", ["broker-basic", "broker-post", "broker-jwt"])
def test_each_auth_method_gets_a_verifiable_rs256_jwt(
    http: httpx.Client, issuer: OidcProvider, client_id: str
) -> None:
    """Every default client gets an RS256 JWT that verifies against jwks_uri and lives ttl s."""
    response = _token_request(http, issuer, client_id, scope="ingestion read")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == issuer.access_token_ttl
    assert body["scope"] == "ingestion read"

    jwks = http.get(issuer.jwks_uri).json()
    header, claims = verify_access_token(body["access_token"], jwks)
    assert header["alg"] == "RS256"
    assert header["typ"] == "at+jwt"
    assert claims["exp"] - claims["iat"] == issuer.access_token_ttl
    assert claims["iss"] == issuer.issuer
    assert claims["aud"] == issuer.resource
    assert claims["sub"] == client_id
    assert claims["client_id"] == client_id
    assert claims["scope"] == "ingestion read"
    assert ("GET", "/jwks") in issuer.proxy.requests


def test_discovery_through_the_proxy_points_at_the_proxy(
    http: httpx.Client, issuer: OidcProvider
) -> None:
    """Discovery fetched via the proxy advertises the proxy's token endpoint and jwks_uri."""
    discovery = http.get(issuer.discovery_url).json()
    assert discovery["issuer"] == issuer.issuer
    assert discovery["token_endpoint"] == issuer.token_endpoint
    assert discovery["jwks_uri"] == issuer.jwks_uri
    assert issuer.issuer.startswith(issuer.proxy.url)


def test_explicit_resource_and_no_scope_still_give_a_jwt(
    http: httpx.Client, issuer: OidcProvider
) -> None:
    """resource=<resource> is accepted; without scope the token has no scope at all."""
    response = _token_request(http, issuer, "broker-basic", resource=issuer.resource)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "scope" not in body
    claims = _unverified_claims(body["access_token"])
    assert claims["aud"] == issuer.resource
    assert "scope" not in claims


def test_unknown_resource_is_invalid_target(http: httpx.Client, issuer: OidcProvider) -> None:
    """A resource other than the configured one is rejected with invalid_target."""
    response = _token_request(http, issuer, "broker-basic", resource="urn:elsewhere")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


def test_wrong_secret_is_401_invalid_client(http: httpx.Client, issuer: OidcProvider) -> None:
    """A wrong client secret yields 401 with the OAuth2 error invalid_client."""
    response = http.post(
        issuer.token_endpoint,
        data={"grant_type": "client_credentials"},
        auth=("broker-basic", "not-the-secret"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_unknown_scope_is_400_invalid_scope(http: httpx.Client, issuer: OidcProvider) -> None:
    """Requesting a scope the issuer does not know yields 400 invalid_scope."""
    response = _token_request(http, issuer, "broker-post", scope="read admin")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_proxy_counts_exactly_the_token_requests(http: httpx.Client, issuer: OidcProvider) -> None:
    """Discovery and JWKS GETs are recorded but only token POSTs count as token requests."""
    http.get(issuer.discovery_url).raise_for_status()
    http.get(issuer.jwks_uri).raise_for_status()
    for _ in range(2):
        assert _token_request(http, issuer, "broker-basic").status_code == 200
    assert issuer.proxy.token_requests == 2
    assert [r.header("Authorization") is not None for r in issuer.proxy.token_request_log] == [
        True,
        True,
    ]
    assert issuer.proxy.token_request_log[0].form == {"grant_type": "client_credentials"}
    assert issuer.proxy.requests == [
        ("GET", "/.well-known/openid-configuration"),
        ("GET", "/jwks"),
        ("POST", "/token"),
        ("POST", "/token"),
    ]
    issuer.proxy.reset()
    assert issuer.proxy.token_requests == 0
    assert issuer.proxy.requests == []


def test_503_fault_is_returned_and_counted(http: httpx.Client, issuer: OidcProvider) -> None:
    """With error503 set, token requests get 503 (counted); discovery is still served."""
    issuer.proxy.set_fault("error503")
    assert _token_request(http, issuer, "broker-basic").status_code == 503
    assert http.get(issuer.discovery_url).status_code == 200
    assert issuer.proxy.token_requests == 1
    issuer.proxy.set_fault(None)
    assert _token_request(http, issuer, "broker-basic").status_code == 200
    assert issuer.proxy.token_requests == 2


def test_fault_with_times_clears_itself(http: httpx.Client, issuer: OidcProvider) -> None:
    """A 429 fault limited to one request hits only the next token request."""
    issuer.proxy.set_fault("error429", times=1, retry_after=2)
    first = _token_request(http, issuer, "broker-basic")
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "2"
    assert _token_request(http, issuer, "broker-basic").status_code == 200
    assert issuer.proxy.fault is None
    assert issuer.proxy.token_requests == 2


def test_reset_and_hang_faults_are_transport_errors(
    http: httpx.Client, issuer: OidcProvider
) -> None:
    """reset aborts the connection; hang holds the request until the client times out."""
    issuer.proxy.set_fault("reset")
    with pytest.raises(httpx.TransportError):
        _token_request(http, issuer, "broker-basic")
    issuer.proxy.set_fault("hang")
    with httpx.Client(trust_env=False, timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
        _token_request(impatient, issuer, "broker-basic")
    issuer.proxy.set_fault(None)
    assert issuer.proxy.token_requests == 2
    assert _token_request(http, issuer, "broker-basic").status_code == 200


def test_mock_server_default_answers_expires_in(
    http: httpx.Client, mock_server: MockServer
) -> None:
    """The default mock server answers any client with expires_in equal to the JWT lifetime."""
    mock_server.proxy.reset()
    response = http.post(
        mock_server.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=("anyone", "anything"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_in"] == mock_server.token_ttl
    claims = _unverified_claims(body["access_token"])
    assert claims["exp"] - claims["iat"] == mock_server.token_ttl
    assert claims["client_id"] == "anyone"
    assert claims["aud"] == "urn:openmetadata"
    assert mock_server.proxy.token_requests == 1


def test_mock_server_can_omit_expires_in(http: httpx.Client, tmp_path: Path) -> None:
    """expires_in=None removes expires_in from the response; the JWT exp carries token_ttl."""
    ensure_node_modules()
    with start_mock_server(tmp_path, expires_in=None, token_ttl=120) as server:
        response = http.post(
            server.token_endpoint,
            data={"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert "expires_in" not in body
        jwks = http.get(server.jwks_uri).json()
        _, claims = verify_access_token(body["access_token"], jwks)
        assert claims["exp"] - claims["iat"] == 120
        assert claims["iss"] == server.issuer


def test_redis_restart_keeps_the_port(redis_server: RedisServer, redis_url: str) -> None:
    """restart() brings Redis back, empty, on the same port and URL."""
    port = redis_server.port
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.set("k", "v")
        redis_server.restart()
        assert redis_server.port == port
        assert redis_server.url == redis_url
        assert client.ping()
        assert client.get("k") is None
    finally:
        client.close()
