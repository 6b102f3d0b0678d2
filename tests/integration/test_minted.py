"""Minted tokens: the broker signs one JWT per hand-out, verifiable against its served JWKS."""

from __future__ import annotations

import base64
import json
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from typer.testing import CliRunner

from service import cli
from service.api.app import create_app
from service.config.settings import Settings
from service.store.crypto import new_cache_key
from service.upstream.minting import load_signing_key
from tests.interop.om_server import LOGGED_IN_USER_PATH, FakeOpenMetadata, OmUser, OmVariant
from tests.support import OidcProvider
from tests.support.broker import BrokerFiles, bearer, running_broker, write_config
from tests.support.broker_process import BrokerProcess, broker_env
from tests.support.minted import DOMAIN, ISSUER, new_signing_key, rewrite_keys, write_minted

LABELS = {"dag_id": "nightly", "task_id": "ingest", "run_id": "scheduled__2026-01-01"}


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, Path]:
    """Two signing keys on disk, k1 and k2."""
    return {kid: new_signing_key(tmp_path, kid) for kid in ("k1", "k2")}


@pytest.fixture
def files(tmp_path: Path, key_files: dict[str, Path]) -> BrokerFiles:
    """A broker signing with k1 only."""
    return write_minted(tmp_path, ["k1"], key_files=key_files)


def kid_of(token: str) -> str:
    """The ``kid`` of a JWT's header."""
    segment = token.split(".", maxsplit=1)[0]
    header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return str(header["kid"])


def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The claims of ``token`` verified as RS256 against ``jwks`` (joserfc)."""
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"])  # type: ignore[arg-type]
    assert decoded.header["alg"] == "RS256"
    return dict(decoded.claims)


async def mint_v1(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    """``POST /v1/token`` for profile om."""
    return await client.post("/v1/token", json={"profile": "om", **body}, headers=bearer(key))


async def test_v1_and_oauth2_hand_out_minted_jwts_verifying_against_the_served_jwks(
    files: BrokerFiles,
) -> None:
    """Both endpoints: RS256, kid k1, iss/sub/email/aud/scope/run labels, never isBot."""
    async with running_broker(files.settings()) as client:
        v1 = await mint_v1(client, files.keys["airflow"], min_ttl=600, labels=LABELS)
        facade = await client.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "scope": "ingestion"},
            auth=("dbt", files.keys["dbt"]),
        )
        jwks = (await client.get("/.well-known/jwks.json")).json()
    assert v1.status_code == 200, v1.text
    assert facade.status_code == 200, facade.text
    assert v1.headers["Token-Broker-Source"] == "minted"
    claims = verify(v1.json()["access_token"], jwks)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "ingestion-airflow"
    assert claims["email"] == f"ingestion-airflow@{DOMAIN}"
    assert claims["aud"] == "openmetadata"
    assert claims["scope"] == "ingestion"
    assert claims["run"] == LABELS
    assert claims["nbf"] == claims["iat"]
    assert not any(name.lower() == "isbot" for name in claims)
    assert verify(facade.json()["access_token"], jwks)["sub"] == "ingestion-dbt"
    assert kid_of(v1.json()["access_token"]) == "k1"


async def test_every_hand_out_is_a_new_token_for_the_callers_own_principal(
    files: BrokerFiles,
) -> None:
    """Never cached: the same caller twice gets two jtis; two callers get two principals."""
    async with running_broker(files.settings()) as client:
        tokens = [
            (await mint_v1(client, files.keys[caller])).json()["access_token"]
            for caller in ("airflow", "airflow", "dbt")
        ]
        jwks = (await client.get("/.well-known/jwks.json")).json()
    claims = [verify(token, jwks) for token in tokens]
    assert len(set(tokens)) == 3
    assert len({c["jti"] for c in claims}) == 3
    assert [c["sub"] for c in claims] == ["ingestion-airflow", "ingestion-airflow", "ingestion-dbt"]


@pytest.mark.parametrize(
    ("min_ttl", "lifetime"),
    [(0, 300), (600, 900), (3400, 3600), (3600, 3600)],
)
async def test_exp_is_min_ttl_plus_a_margin_capped_by_max_ttl(
    files: BrokerFiles, min_ttl: int, lifetime: int
) -> None:
    """exp - iat = min_ttl + 300 s, never beyond the grant's max_ttl (1 h here)."""
    now = 1_900_000_000.0
    async with running_broker(files.settings(), clock=lambda: now) as client:
        response = await mint_v1(client, files.keys["airflow"], min_ttl=min_ttl)
    assert response.status_code == 200, response.text
    body = response.json()
    claims = jwt.decode(body["access_token"], _any_key(body["access_token"], files)).claims
    assert claims["iat"] == int(now)
    assert claims["exp"] - claims["iat"] == lifetime
    assert body["expires_in"] == lifetime


def _any_key(token: str, files: BrokerFiles) -> RSAKey:
    kid = kid_of(token)
    return RSAKey.import_key((files.config.parent / f"{kid}.pem").read_bytes())


async def test_min_ttl_beyond_max_ttl_is_refused(files: BrokerFiles) -> None:
    """Policy refuses a run longer than the grant allows, as for exchanged tokens."""
    async with running_broker(files.settings()) as client:
        response = await mint_v1(client, files.keys["airflow"], min_ttl=7200)
    assert response.status_code == 400
    assert "max_ttl" in response.json()["error_description"]


async def test_discovery_documents_come_from_the_config(files: BrokerFiles) -> None:
    """issuer and jwks_uri from signing.issuer (never the Host header); public, short max-age."""
    async with running_broker(files.settings()) as client:
        config = await client.get(
            "/.well-known/openid-configuration", headers={"Host": "evil.example"}
        )
        jwks = await client.get("/.well-known/jwks.json")
    assert config.status_code == 200
    assert config.json() == {
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/.well-known/jwks.json",
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    assert jwks.headers["Cache-Control"] == "public, max-age=300"
    (published,) = jwks.json()["keys"]
    assert set(published) == {"kty", "n", "e", "kid", "alg", "use"}


async def test_discovery_is_404_without_signing(tmp_path: Path, issuer: OidcProvider) -> None:
    """No signing: section: both documents are 404 with an RFC 6749 error body."""
    files = write_config(tmp_path, issuer)
    async with running_broker(files.settings()) as client:
        for path in ("/.well-known/jwks.json", "/.well-known/openid-configuration"):
            response = await client.get(path)
            assert response.status_code == 404
            assert response.json()["error"] == "invalid_request"


@asynccontextmanager
async def replica(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """One broker replica in-process, with its app (to reload it) and a client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            yield app, client


async def test_key_rotation_across_two_replicas_never_fails_a_hand_out(
    files: BrokerFiles, key_files: dict[str, Path], redis_url: str
) -> None:
    """Publish k2 second, move it first, retire k1, replica B then A: every token verifies."""
    settings = files.settings(redis_url, cache_keys=new_cache_key())
    async with replica(settings) as (app_a, a), replica(settings) as (app_b, b):
        replicas = [(app_a, a), (app_b, b)]
        signed_by: list[str] = []

        async def hand_out_everywhere() -> None:
            # OpenMetadata may fetch the JWKS from either replica: each must vouch for each token.
            jwks = [(await c.get("/.well-known/jwks.json")).json() for _, c in replicas]
            for _, client in replicas:
                response = await mint_v1(client, files.keys["airflow"])
                assert response.status_code == 200, response.text
                token = response.json()["access_token"]
                for served in jwks:
                    verify(token, served)
                signed_by.append(kid_of(token))

        await hand_out_everywhere()
        for kids in (["k1", "k2"], ["k2", "k1"], ["k2"]):
            rewrite_keys(files, kids, key_files)
            for app, _ in (replicas[1], replicas[0]):
                assert await app.state.runtime.reload("test")
                await hand_out_everywhere()
    assert signed_by[0] == "k1"
    assert signed_by[-2:] == ["k2", "k2"]
    assert "k1" in signed_by[2:6]  # k1 went on signing on a replica until it was moved back


async def test_the_openmetadata_stand_in_accepts_minted_tokens_until_their_key_is_retired(
    files: BrokerFiles, key_files: dict[str, Path]
) -> None:
    """A known principal is logged in; an unknown one is a 404; a retired key's token a 401."""
    served: dict[str, Any] = {}
    users = (OmUser(name="ingestion-airflow", email=f"ingestion-airflow@{DOMAIN}"),)
    variant = OmVariant(principal_domain=DOMAIN, users=users)
    with FakeOpenMetadata(lambda: served, "1.6.0", variant) as om:
        async with replica(files.settings()) as (app, client):
            served.update((await client.get("/.well-known/jwks.json")).json())
            old = (await mint_v1(client, files.keys["airflow"])).json()["access_token"]
            unknown = (await mint_v1(client, files.keys["dbt"])).json()["access_token"]
            logged_in = _om_get(om, old)
            stranger = _om_get(om, unknown)
            rewrite_keys(files, ["k2"], key_files)
            assert await app.state.runtime.reload("test")
            served.clear()
            served.update((await client.get("/.well-known/jwks.json")).json())
            new = (await mint_v1(client, files.keys["airflow"])).json()["access_token"]
            retired, fresh = _om_get(om, old), _om_get(om, new)
    assert logged_in.status_code == 200, logged_in.text
    assert logged_in.json()["name"] == "ingestion-airflow"
    assert stranger.status_code == 404, stranger.text
    assert retired.status_code == 401, retired.text
    assert "signing key not found" in retired.json()["message"]
    assert fresh.status_code == 200, fresh.text


def _om_get(om: FakeOpenMetadata, token: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as http:
        return http.get(om.url + LOGGED_IN_USER_PATH, headers={"Authorization": f"Bearer {token}"})


def test_the_sidecar_gets_a_new_minted_token_at_its_refresh_point(
    tmp_path: Path, key_files: dict[str, Path]
) -> None:
    """Tokens of 8 s (max_ttl): the sidecar fetches a new one, with a new jti, before expiry."""
    files = write_minted(tmp_path, ["k1"], max_ttl="8s", key_files=key_files)
    broker = BrokerProcess(files, tmp_path / "broker.log")
    target = tmp_path / "token"
    broker.start()
    env = broker_env(TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL=files.keys["airflow"])
    args = ["--profile", "om", "--min-ttl", "2s", "--write", str(target)]
    from tests.integration.test_sidecar import Sidecar, wait_until  # noqa: PLC0415

    sidecar = Sidecar(args, env, tmp_path / "sidecar.log")
    try:
        wait_until(target.exists, "the first token")
        first = target.read_text()
        wait_until(lambda: target.read_text() not in {"", first}, "a refreshed token")
        second = target.read_text()
        jwks = httpx.get(f"{broker.url}/.well-known/jwks.json", trust_env=False).json()
    finally:
        sidecar.stop()
        broker.stop()
    one, two = verify(first, jwks), verify(second, jwks)
    assert one["jti"] != two["jti"]
    assert two["exp"] > one["exp"]
    assert one["exp"] - one["iat"] == 8
    assert time.time() < two["exp"] + 8


def test_new_signing_key_writes_a_0600_3072_bit_key_and_never_overwrites(tmp_path: Path) -> None:
    """The PEM loads as a 3072-bit signing key, mode 0600; a second run refuses the same path."""
    out = tmp_path / "k9.pem"
    first = CliRunner().invoke(cli.app, ["new-signing-key", "--kid", "k9", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert f"- {{kid: k9, private_key: {{file: {out}}}}}" in first.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_signing_key(out.read_bytes(), "k9")
    assert key.key.as_dict(private=False)["n"]
    assert "PRIVATE" not in first.output
    before = out.read_bytes()
    again = CliRunner().invoke(cli.app, ["new-signing-key", "--kid", "k9", "--out", str(out)])
    assert again.exit_code == 1
    assert out.read_bytes() == before


def test_check_config_warns_about_published_keys_that_do_not_sign(
    files: BrokerFiles, key_files: dict[str, Path]
) -> None:
    """A key beyond the first: exit 0, with a warning to retire it after max_ttl."""
    rewrite_keys(files, ["k2", "k1"], key_files)
    result = CliRunner().invoke(cli.app, ["check-config", "--config", str(files.config)])
    assert result.exit_code == 0, result.output
    assert "signing key 'k1' is published but does not sign" in result.output
    assert "max_ttl 3600 s" in result.output
