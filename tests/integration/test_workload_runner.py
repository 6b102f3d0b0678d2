"""End to end: a pod's projected service-account token file is the runners' only credential.

A loopback cluster issuer mints a projected token into a file, as the kubelet would; the
``token`` and ``sidecar --once`` CLIs read it through ``TOKEN_BROKER_CREDENTIAL_FILE`` and ask
a real broker subprocess, which verifies it against the cluster's JWKS and the real issuer.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import OidcProvider, verify_access_token
from tests.support.broker import write_config
from tests.support.broker_process import BrokerProcess, broker_env, module_broker, run_cli
from tests.support.workload import WorkloadIssuer

TIMEOUT = 30
AUDIENCE = "token-broker"
SUBJECT = "system:serviceaccount:ingestion:runner pod=runner-7d9f8-abcde"


@pytest.fixture(scope="module")
def cluster() -> Iterator[WorkloadIssuer]:
    """A loopback stand-in for the cluster's service-account issuer."""
    issuer = WorkloadIssuer()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture(scope="module")
def broker(
    oidc_provider: OidcProvider,
    cluster: WorkloadIssuer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BrokerProcess]:
    """A broker subprocess trusting the cluster; caller ``pods`` is ingestion/runner."""
    directory = tmp_path_factory.mktemp("workload-broker")
    files = write_config(
        directory,
        oidc_provider,
        trusted_issuers={
            "cluster": {"kind": "kubernetes", "issuer": cluster.url, "audience": AUDIENCE}
        },
        callers={
            "pods": {
                "kubernetes": {"namespace": "ingestion", "service_account": "runner"},
                "grants": [{"profile": "ingestion", "max_ttl": "4h"}],
            }
        },
    )
    with module_broker(oidc_provider, directory, files) as proc:
        yield proc


def projected(directory: Path, token: str) -> Path:
    """Write ``token`` where a projected volume would put it (0600, no trailing newline)."""
    path = directory / "projected" / "token"
    path.parent.mkdir(exist_ok=True)
    path.write_text(token)
    path.chmod(0o600)
    return path


def cli(
    broker: BrokerProcess, credential: Path, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``python -m service ARGS`` with only the credential file and broker URL, bounded."""
    env = broker_env(
        TOKEN_BROKER_URL=broker.url,
        TOKEN_BROKER_CREDENTIAL_FILE=str(credential),
        HOME=str(cwd),
    )
    return run_cli(list(args), env, cwd)


def test_token_with_a_projected_token_file_gets_the_pods_grant(
    broker: BrokerProcess, cluster: WorkloadIssuer, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    """`token --json` authenticates with the projected file; the audit line names the pod."""
    credential = cluster.mint()
    path = projected(tmp_path, credential)
    result = cli(broker, path, tmp_path, "token", "--profile", "ingestion", "--json",
                 "--min-ttl", "30m", "--label", "run_id=e2e-1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    _, claims = verify_access_token(body["access_token"], oidc_provider.jwks())
    assert claims["exp"] > time.time() + 1800
    line = broker.wait_for_audit(lambda r: r.get("labels", {}).get("run_id") == "e2e-1")
    assert line["outcome"] == "issued"
    assert line["caller"] == "pods"
    assert line["credential"] == "jwt:cluster"
    assert line["subject"] == SUBJECT
    log = broker.log.read_text()
    assert credential not in log
    assert body["access_token"] not in log
    assert credential not in result.stderr


def test_sidecar_once_writes_the_token_with_a_projected_token_file(
    broker: BrokerProcess, cluster: WorkloadIssuer, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    """The init-container recipe: `sidecar --once` with the projected file writes a token."""
    path = projected(tmp_path, cluster.mint())
    target = tmp_path / "om" / "token"
    target.parent.mkdir()
    result = cli(broker, path, tmp_path, "sidecar", "--profile", "ingestion", "--once",
                 "--write", str(target), "--min-ttl", "30m", "--timeout", "10s")  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, claims = verify_access_token(target.read_text(), oidc_provider.jwks())
    assert claims["exp"] > time.time() + 1800


@pytest.mark.parametrize(
    "token_kwargs",
    [{"issued_ago": 7200}, {"audience": "kubernetes.default.svc"}, {"service_account": "other"}],
    ids=["expired", "api-server-audience", "unbound-service-account"],
)
def test_token_with_an_unacceptable_projected_token_fails_clearly(
    broker: BrokerProcess,
    cluster: WorkloadIssuer,
    tmp_path: Path,
    token_kwargs: dict[str, object],
) -> None:
    """Expired, wrong-audience or unbound SA tokens: exit 1 with the broker's 401, no token."""
    credential = cluster.mint(**token_kwargs)
    result = cli(
        broker, projected(tmp_path, credential), tmp_path, "token", "--profile", "ingestion"
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "401" in result.stderr, result.stderr
    assert credential not in result.stderr
