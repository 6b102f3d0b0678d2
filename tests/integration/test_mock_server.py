"""Against oauth2-mock-server: token responses the broker must read, or refuse, correctly."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import EllipsisType

import httpx
import pytest
import yaml

from service.config.settings import Settings
from tests.support import MockServer, start_mock_server, verify_access_token
from tests.support.broker import bearer, new_key, running_broker


def _config(tmp_path: Path, server: MockServer, key: str) -> Settings:
    (tmp_path / "secret").write_text("mock-secret")
    document = {
        "profiles": {
            "mock": {
                "provider": "oidc",
                "issuer": server.issuer,
                "client_id": "broker-mock",
                "client_secret": {"file": str(tmp_path / "secret")},
                "auth_method": "client_secret_post",
                "scopes": ["ingestion"],
            }
        },
        "callers": {
            "airflow": {
                "api_key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                "grants": [{"profile": "mock"}],
            }
        },
    }
    (tmp_path / "broker.yaml").write_text(yaml.safe_dump(document))
    return Settings(config=tmp_path / "broker.yaml")


@pytest.fixture
def mock_with(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MockServer]:
    """An oauth2-mock-server whose token responses carry the parametrised expires_in."""
    expires_in: int | str | EllipsisType | None = request.param
    server = start_mock_server(tmp_path / "mock", expires_in=expires_in, token_ttl=1800)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mock_with", [None], indirect=True)
async def test_jwt_exp_used_when_expires_in_absent(tmp_path: Path, mock_with: MockServer) -> None:
    """Without expires_in, the JWT's exp claim sets the token's life."""
    key = new_key("airflow")
    async with running_broker(_config(tmp_path, mock_with, key)) as client:
        response = await client.post("/v1/token", json={"profile": "mock"}, headers=bearer(key))
    assert response.status_code == 200, response.text
    body = response.json()
    _, claims = verify_access_token(body["access_token"], mock_with_jwks(mock_with))
    assert body["expires_at"] == claims["exp"]
    assert 1700 < body["expires_in"] <= 1800


@pytest.mark.parametrize("mock_with", ["soon"], indirect=True)
async def test_non_numeric_expires_in_is_a_502(tmp_path: Path, mock_with: MockServer) -> None:
    """A non-numeric expires_in is refused as an unusable issuer response, and nothing is cached."""
    key = new_key("airflow")
    async with running_broker(_config(tmp_path, mock_with, key)) as client:
        first = await client.post("/v1/token", json={"profile": "mock"}, headers=bearer(key))
        second = await client.post("/v1/token", json={"profile": "mock"}, headers=bearer(key))
    assert (first.status_code, second.status_code) == (502, 502)
    assert first.json()["error"] == "server_error"
    assert mock_with.proxy.token_requests == 2


@pytest.mark.parametrize("mock_with", ["1800"], indirect=True)
async def test_numeric_string_expires_in_is_accepted(tmp_path: Path, mock_with: MockServer) -> None:
    """expires_in sent as a string of digits is honoured."""
    key = new_key("airflow")
    async with running_broker(_config(tmp_path, mock_with, key)) as client:
        response = await client.post("/v1/token", json={"profile": "mock"}, headers=bearer(key))
    assert response.status_code == 200, response.text
    assert 1790 < response.json()["expires_in"] <= 1800


def mock_with_jwks(server: MockServer) -> dict[str, object]:
    """The mock server's JWKS, fetched over loopback."""
    with httpx.Client(trust_env=False) as client:
        jwks: dict[str, object] = client.get(server.jwks_uri).json()
    return jwks
