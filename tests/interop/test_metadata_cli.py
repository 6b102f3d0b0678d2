"""The real OpenMetadata ``metadata`` CLI, fed by the broker, against a fake OpenMetadata server.

Recipe (a): ``token-broker exec --env OM_JWT_TOKEN -- metadata ingest -c wf.yaml`` with
``jwtToken: "${OM_JWT_TOKEN}"`` in the workflow. Recipe (b): ``token-broker sidecar --once
--write FILE`` first, then ``metadata ingest`` with ``jwtToken: FILE``. Both run the pinned
``openmetadata-ingestion`` from ``.interop/venv`` as a subprocess, against a broker subprocess
on the session oidc-provider; the fake server (om_server.py) accepts only tokens the IdP
signed, answers the version check, and 404s the rest, so every run ends right after the CLI
authenticated, with exit status 1. What is asserted is what the CLI sent, and that no token,
API key or client secret was written to the workflow file, an argv or the CLI's output.

Then, for every OpenMetadata configuration of ``doctor_cases.py`` (the stand-in enforcing OM's
rules per variant), ``token-broker doctor openmetadata`` runs first and the real CLI after it:
the CLI authenticates exactly where doctor said OM accepts, and meets OM's status where not.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.observe.audit import fingerprint
from tests.interop.doctor_cases import CASES, DoctorCase
from tests.interop.ensure_venv import pinned_version
from tests.interop.om_server import VERSION_PATH, FakeOpenMetadata, SeenRequest
from tests.support import OidcProvider, verify_access_token
from tests.support.broker_process import BrokerProcess, broker_env

# A cold `metadata` start imports for ~7 s; the first test may also build .interop/venv.
pytestmark = pytest.mark.timeout(900)
RUN_TIMEOUT = 180
# The console script runners install, from the project venv (`make install`).
TOKEN_BROKER = Path(sys.executable).with_name("token-broker")
MIN_TTL_SECONDS = 1800

# The `workflowConfig` block is the one docs/recipes/metadata-cli.md shows, read from there, so
# the documented snippet is what runs; the source is an in-memory SQLite (nothing external).
RECIPE = Path(__file__).resolve().parents[2] / "docs" / "recipes" / "metadata-cli.md"
RECIPE_HOST_PORT = "https://openmetadata.example.com/api"
RECIPE_JWT_TOKEN = '"${OM_JWT_TOKEN}"'
SOURCE_AND_SINK = """\
source:
  type: sqlite
  serviceName: token_broker_interop
  serviceConnection:
    config:
      type: SQLite
      databaseMode: ":memory:"
  sourceConfig:
    config:
      type: DatabaseMetadata
sink:
  type: metadata-rest
  config: {}
"""


@dataclass(frozen=True)
class Run:
    """A finished subprocess."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr


def run(
    argv: list[str], env: dict[str, str], cwd: Path, om_server: FakeOpenMetadata | None = None
) -> Run:
    """Run ``argv`` to completion (bounded); ``om_server`` snapshots it while it is served."""
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if om_server is not None:
        om_server.watch(process.pid)
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)
        pytest.fail(f"{Path(argv[0]).name} did not finish within {RUN_TIMEOUT} s")
    finally:
        if om_server is not None:
            om_server.watch(None)
    return Run(argv, process.returncode, stdout, stderr)


def recipe_workflow_config() -> str:
    """The ``workflowConfig`` YAML block of docs/recipes/metadata-cli.md."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", RECIPE.read_text(), re.MULTILINE | re.DOTALL)
    (block,) = [b for b in blocks if b.startswith("workflowConfig:")]
    return str(block)


def write_workflow(directory: Path, host_port: str, jwt_token: str | None = None) -> Path:
    """The recipe's workflow on ``host_port``; ``jwt_token`` replaces ``"${OM_JWT_TOKEN}"``.

    At DEBUG, so that the no-leak checks cover everything the CLI can log.
    """
    config = recipe_workflow_config()
    assert config.count(RECIPE_HOST_PORT) == 1
    assert config.count(RECIPE_JWT_TOKEN) == 1
    config = config.replace(RECIPE_HOST_PORT, host_port)
    if jwt_token is not None:
        config = config.replace(RECIPE_JWT_TOKEN, f'"{jwt_token}"')
    config = config.replace("workflowConfig:\n", "workflowConfig:\n  loggerLevel: DEBUG\n", 1)
    path = directory / "workflow.yaml"
    path.write_text(SOURCE_AND_SINK + config)
    return path


def assert_absent(secrets: Iterable[str], **places: str) -> None:
    """No secret occurs in any place; a failure names the place, never the secret."""
    for where, text in places.items():
        for secret in secrets:
            if secret and secret in text:
                pytest.fail(f"a secret (sha256 {fingerprint(secret)}) appears in {where}")


def assert_authenticated_with(token: str, om_server: FakeOpenMetadata, result: Run) -> None:
    """The CLI passed the version check, sending exactly ``Authorization: Bearer <token>``.

    Every request carries the one header with that token, none was refused, and the run
    ended where the fake server stops answering (after authentication, exit status 1).
    """
    seen = om_server.requests
    assert seen, f"no request reached the server: {result.output[-3000:]}"
    assert seen[0].request_line == f"GET {VERSION_PATH} HTTP/1.1"
    assert seen[0].status == 200
    for request in seen:
        exact = request.header("Authorization") == [f"Bearer {token}"]
        assert exact, f"{request.request_line}: not exactly 'Authorization: Bearer <token>'"
        assert request.status != 401, request.request_line
    assert f"Server version [{om_server.version}]" in result.output
    assert any(r.status == 404 for r in seen), "the workflow never got past authentication"
    assert result.returncode == 1


def assert_broker_issued(
    token: str, oidc_provider: OidcProvider, broker: BrokerProcess, run_id: str
) -> None:
    """``token`` is the IdP-signed token the broker handed to the run labelled ``run_id``."""
    _, claims = verify_access_token(token, oidc_provider.jwks())
    assert claims["iss"] == oidc_provider.issuer
    assert claims["client_id"] == "broker-basic"
    assert claims["exp"] > time.time() + MIN_TTL_SECONDS - 120
    line = broker.wait_for_audit(lambda r: r.get("labels", {}).get("run_id") == run_id)
    assert line["outcome"] == "issued"
    assert line["caller"] == "airflow"
    assert line["fingerprint"] == fingerprint(token)


def test_exec_hands_the_broker_token_to_metadata_ingest(
    broker: BrokerProcess,
    om_server: FakeOpenMetadata,
    oidc_provider: OidcProvider,
    metadata_cli: Path,
    tmp_path: Path,
) -> None:
    """exec -> metadata ingest sends the broker's token as Bearer; no secret in file/argv/output."""
    workflow = write_workflow(tmp_path, om_server.api_url)
    run_id = f"interop__{uuid.uuid4().hex}"
    argv = [
        str(TOKEN_BROKER), "exec", "--profile", "ingestion", "--min-ttl", "30m",
        "--env", "OM_JWT_TOKEN", "--label", f"run_id={run_id}",
        "--", str(metadata_cli), "ingest", "-c", str(workflow),
    ]  # fmt: skip
    key = broker.files.keys["airflow"]
    env = broker_env(TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL=key, HOME=str(tmp_path))
    result = run(argv, env, tmp_path, om_server)

    seen = om_server.requests
    token = seen[0].bearer if seen else None
    assert token is not None, f"no Bearer token reached the server: {result.output[-3000:]}"
    assert_broker_issued(token, oidc_provider, broker, run_id)
    secrets = [token, *broker.files.secrets]
    assert_absent(
        secrets,
        workflow=workflow.read_text(),
        argv=" ".join(argv),
        stdout=result.stdout,
        stderr=result.stderr,
    )
    assert_authenticated_with(token, om_server, result)
    # The process that sent the header is the one exec became: the CLI with its own argv,
    # the token in OM_JWT_TOKEN only, and no credential that could mint more tokens.
    sender = seen[0].process
    assert sender is not None
    assert sender.argv[1:] == [str(metadata_cli), "ingest", "-c", str(workflow)]
    handed_over = sender.environ.get("OM_JWT_TOKEN") == token
    assert handed_over, "OM_JWT_TOKEN of the CLI is not the token it sent"
    assert "TOKEN_BROKER_CREDENTIAL" not in sender.environ
    assert_absent(secrets, sender_argv=" ".join(sender.argv))


def test_sidecar_once_token_file_is_read_by_metadata_ingest(
    broker: BrokerProcess,
    om_server: FakeOpenMetadata,
    oidc_provider: OidcProvider,
    metadata_cli: Path,
    tmp_path: Path,
) -> None:
    """sidecar --once --write FILE, jwtToken: FILE -> the CLI sends Bearer <FILE content>."""
    token_dir = tmp_path / "om"
    token_dir.mkdir()
    token_file = token_dir / "token"
    run_id = f"interop__{uuid.uuid4().hex}"
    key = broker.files.keys["airflow"]
    sidecar_argv = [
        str(TOKEN_BROKER), "sidecar", "--profile", "ingestion", "--once",
        "--write", str(token_file), "--min-ttl", "30m", "--label", f"run_id={run_id}",
    ]  # fmt: skip
    sidecar_env = broker_env(TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL=key)
    sidecar = run(sidecar_argv, sidecar_env, tmp_path)
    assert sidecar.returncode == 0, sidecar.stderr[-3000:]
    token = token_file.read_text()
    secrets = [token, *broker.files.secrets]
    assert_absent(
        secrets,
        sidecar_argv=" ".join(sidecar_argv),
        sidecar_stdout=sidecar.stdout,
        sidecar_stderr=sidecar.stderr,
    )
    assert_broker_issued(token, oidc_provider, broker, run_id)

    # The ingestion side knows nothing of the broker: no TOKEN_BROKER_*, just the file.
    workflow = write_workflow(tmp_path, om_server.api_url, str(token_file))
    argv = [str(metadata_cli), "ingest", "-c", str(workflow)]
    result = run(argv, broker_env(HOME=str(tmp_path)), tmp_path)
    assert_absent(
        secrets,
        workflow=workflow.read_text(),
        argv=" ".join(argv),
        stdout=result.stdout,
        stderr=result.stderr,
    )
    assert_authenticated_with(token, om_server, result)


def test_a_token_the_issuer_did_not_sign_is_refused(
    om_server: FakeOpenMetadata, metadata_cli: Path, tmp_path: Path
) -> None:
    """Control: the fake server 401s an unsigned token and the CLI fails on it (not vacuous)."""
    forged = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJpbmdlc3Rpb24tYm90In0.Zm9yZ2Vk"
    workflow = write_workflow(tmp_path, om_server.api_url, forged)
    result = run([str(metadata_cli), "ingest", "-c", str(workflow)], broker_env(), tmp_path)
    seen: list[SeenRequest] = om_server.requests
    assert seen
    assert [request.bearer for request in seen] == [forged] * len(seen)
    assert {request.status for request in seen} == {401}
    assert result.returncode == 1
    assert "Not authorized" in result.output


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_doctor_predicts_what_metadata_ingest_meets(
    case: DoctorCase,
    broker: BrokerProcess,
    oidc_provider: OidcProvider,
    metadata_cli: Path,
    tmp_path: Path,
) -> None:
    """Per OM variant: doctor's verdict first, then exec -> metadata ingest meets exactly that."""
    key = broker.files.keys["airflow"]
    env = broker_env(TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL=key, HOME=str(tmp_path))
    version = ".".join(pinned_version().split(".")[:3])
    with case.server(oidc_provider.jwks_uri, version) as om:
        doctor = run(
            [str(TOKEN_BROKER), "doctor", "openmetadata", "--server", om.api_url,
             "--profile", "ingestion", "--min-ttl", "30m"],
            env, tmp_path,
        )  # fmt: skip
        assert doctor.returncode == (0 if case.accepted else 1), doctor.output
        for fragment in case.fragments(oidc_provider.jwks_uri):
            assert fragment in doctor.stdout, f"{fragment!r} not in:\n{doctor.stdout}"
        om.reset()
        workflow = write_workflow(tmp_path, om.api_url)
        argv = [
            str(TOKEN_BROKER), "exec", "--profile", "ingestion", "--min-ttl", "30m",
            "--", str(metadata_cli), "ingest", "-c", str(workflow),
        ]  # fmt: skip
        result = run(argv, env, tmp_path, om)
        seen = om.requests
    token = seen[0].bearer if seen else None
    assert token is not None, f"no Bearer token reached the server: {result.output[-3000:]}"
    assert_absent([token, *broker.files.secrets], doctor=doctor.output, cli=result.output)
    statuses = [request.status for request in seen]
    assert result.returncode != 0
    if case.cli_status == 401:
        assert set(statuses) == {401}, statuses
        assert "Not authorized" in result.output
    elif case.cli_status == 404:
        # Authenticated (the version check passes), then every lookup: user not found.
        assert statuses[0] == 200, statuses
        lookups = [request.status for request in seen if request.path != VERSION_PATH]
        assert lookups, statuses
        assert set(lookups) == {404}, statuses
    elif case.cli_status == 403:
        assert 401 not in statuses
        assert 403 in statuses, statuses
    else:
        assert_authenticated_with(token, om, result)
