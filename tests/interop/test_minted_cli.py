"""The real ``metadata`` CLI with tokens the broker minted, against the OpenMetadata stand-in.

The stand-in trusts the broker's ``/.well-known/jwks.json`` as one of its ``publicKeyUrls``
(``JwtFilter`` finds the key by ``kid``; it never checks ``iss`` or ``aud``). The workflow
carries no secret and no long-lived token: ``jwtToken: "${OM_JWT_TOKEN}"``, filled by
``token-broker exec`` for that run only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.interop.ensure_venv import pinned_version
from tests.interop.om_server import FakeOpenMetadata, OmVariant
from tests.interop.test_metadata_cli import (
    TOKEN_BROKER,
    Run,
    assert_absent,
    assert_authenticated_with,
    run,
    write_workflow,
)
from tests.support.broker_process import BrokerProcess, broker_env
from tests.support.minted import new_signing_key, rewrite_keys, write_minted

pytestmark = pytest.mark.timeout(900)
MIN_TTL = 1800
MARGIN = 300  # the broker's margin beyond min_ttl


@pytest.fixture(scope="module")
def minted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, Path]]:
    """A broker subprocess that mints for callers airflow and dbt, signing with key k1."""
    directory = tmp_path_factory.mktemp("minted-interop")
    keys = {kid: new_signing_key(directory, kid) for kid in ("k1", "k2")}
    files = write_minted(directory, ["k1"], max_ttl="1h", key_files=keys)
    with BrokerProcess(files, directory / "broker.log") as broker:
        yield broker, directory


def _claims(token: str, broker: BrokerProcess) -> dict[str, object]:
    jwks = httpx.get(f"{broker.url}/.well-known/jwks.json", trust_env=False, timeout=5).json()
    return dict(jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"]).claims)


def _exec(
    broker: BrokerProcess, caller: str, om: FakeOpenMetadata, tmp: Path, cli: Path
) -> tuple[str, Run]:
    """``token-broker exec`` as ``caller`` -> ``metadata ingest``: the token OM saw, the run."""
    workflow = write_workflow(tmp, om.api_url)
    argv = [
        str(TOKEN_BROKER), "exec", "--profile", "om", "--min-ttl", f"{MIN_TTL}",
        "--label", f"run_id=minted__{uuid.uuid4().hex}",
        "--", str(cli), "ingest", "-c", str(workflow),
    ]  # fmt: skip
    env = broker_env(
        TOKEN_BROKER_URL=broker.url,
        TOKEN_BROKER_CREDENTIAL=broker.files.keys[caller],
        HOME=str(tmp),
    )
    om.reset()
    result = run(argv, env, tmp, om)
    seen = om.requests
    token = seen[0].bearer if seen else None
    assert token is not None, f"no Bearer token reached the server: {result.output[-3000:]}"
    assert_absent(
        [token, *broker.files.keys.values()],
        workflow=workflow.read_text(),
        argv=" ".join(argv),
        output=result.output,
    )
    return token, result


def test_each_run_authenticates_as_its_grants_principal_with_its_own_token(
    minted: tuple[BrokerProcess, Path], metadata_cli: Path, tmp_path: Path
) -> None:
    """Two runs of two callers: OM accepts both, as two principals, with two jtis and lives."""
    broker, _ = minted
    version = ".".join(pinned_version().split(".")[:3])
    variant = OmVariant(public_key_urls=(f"{broker.url}/.well-known/jwks.json",))
    with FakeOpenMetadata(None, version, variant) as om:
        airflow_token, airflow_run = _exec(broker, "airflow", om, tmp_path, metadata_cli)
        assert_authenticated_with(airflow_token, om, airflow_run)
        dbt_token, dbt_run = _exec(broker, "dbt", om, tmp_path, metadata_cli)
        assert_authenticated_with(dbt_token, om, dbt_run)
    first, second = _claims(airflow_token, broker), _claims(dbt_token, broker)
    issued_at, expires_at = first["iat"], first["exp"]
    assert isinstance(issued_at, int)
    assert isinstance(expires_at, int)
    assert (first["sub"], second["sub"]) == ("ingestion-airflow", "ingestion-dbt")
    assert first["jti"] != second["jti"]
    assert "isBot" not in first
    # The run's token lives as long as the run asked for, plus the broker's margin.
    assert expires_at - issued_at == MIN_TTL + MARGIN
    assert expires_at > time.time() + MIN_TTL


def test_a_token_signed_by_a_key_no_longer_published_is_refused(
    minted: tuple[BrokerProcess, Path], metadata_cli: Path, tmp_path: Path
) -> None:
    """After k1 is retired from the JWKS, OM refuses a token it signed (401 on every call)."""
    broker, directory = minted
    version = ".".join(pinned_version().split(".")[:3])
    variant = OmVariant(public_key_urls=(f"{broker.url}/.well-known/jwks.json",))
    with FakeOpenMetadata(None, version, variant) as om:
        old_token, _ = _exec(broker, "airflow", om, tmp_path, metadata_cli)
        keys = {kid: directory / f"{kid}.pem" for kid in ("k1", "k2")}
        rewrite_keys(broker.files, ["k2"], keys)
        deadline = time.monotonic() + 30
        while "k1" in httpx.get(f"{broker.url}/.well-known/jwks.json", trust_env=False).text:
            assert time.monotonic() < deadline, "the broker did not reload its signing keys"
            time.sleep(0.5)
        om.reset()
        workflow = write_workflow(tmp_path, om.api_url, old_token)
        result = run([str(metadata_cli), "ingest", "-c", str(workflow)], broker_env(), tmp_path)
        statuses = {request.status for request in om.requests}
    assert statuses == {401}
    assert result.returncode == 1
