"""``token-broker doctor openmetadata``, the real CLI, against a real broker and the OM stand-in.

The broker is a subprocess on the session oidc-provider (profile ``ingestion``: RS256 JWTs with
a ``kid``, ``sub`` = ``broker-basic``, no email); the stand-in (tests/interop/om_server.py)
is started per variant of tests/interop/doctor_cases.py. Doctor runs as ``python -m service``
and from the runner's .pyz (built once for this module). Its exit status must equal whether the
stand-in accepted the token at ``loggedInUser``, its output must name the remedy, and the token
must never appear in it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import build_runner
from tests.interop.doctor_cases import CASES, DoctorCase
from tests.interop.om_server import LOGGED_IN_USER_PATH, FakeOpenMetadata
from tests.support import OidcProvider
from tests.support.broker_process import BrokerProcess, broker_env, module_broker

TIMEOUT = 60
WAYS = ("server", "pyz")


@pytest.fixture(scope="module")
def broker(
    oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker subprocess for this module, on the session issuer."""
    with module_broker(oidc_provider, tmp_path_factory.mktemp("doctor-broker")) as proc:
        yield proc


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runner's .pyz, built once for this module."""
    dist = tmp_path_factory.mktemp("doctor-dist")
    assert build_runner.main(["--dist", str(dist)]) == 0
    return dist / build_runner.PYZ_NAME


def doctor(
    way: str, pyz: Path, broker: BrokerProcess, om: FakeOpenMetadata, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``doctor openmetadata`` one way against ``om``, as the airflow caller."""
    prefix = (
        [sys.executable, "-m", "service"] if way == "server" else [sys.executable, "-S", str(pyz)]
    )
    argv = [
        *prefix, "doctor", "openmetadata", "--server", om.api_url,
        "--profile", "ingestion", "--min-ttl", "30m", "--timeout", "5s", *extra,
    ]  # fmt: skip
    env = broker_env(
        TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL=broker.files.keys["airflow"]
    )
    if way == "pyz":
        env.pop("PYTHONPATH", None)
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def om_accepted(om: FakeOpenMetadata) -> tuple[bool, str]:
    """Whether the stand-in answered ``loggedInUser`` with 200, and the token it was sent."""
    (seen,) = [r for r in om.requests if r.path == LOGGED_IN_USER_PATH]
    assert seen.bearer is not None
    return seen.status == 200, seen.bearer


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_doctor_predicts_the_stand_in(
    case: DoctorCase, way: str, pyz: Path, broker: BrokerProcess, oidc_provider: OidcProvider
) -> None:
    """Per OM variant (rule in doctor_cases.py): exit 0 iff loggedInUser accepts; remedy named."""
    with case.server(oidc_provider.jwks_uri) as om:
        result = doctor(way, pyz, broker, om)
        accepted, token = om_accepted(om)
    assert accepted is case.accepted, result.stdout
    assert result.returncode == (0 if accepted else 1), result.stdout + result.stderr
    for fragment in case.fragments(oidc_provider.jwks_uri):
        assert fragment in result.stdout, f"{fragment!r} not in:\n{result.stdout}"
    assert token not in result.stdout + result.stderr
    assert broker.files.keys["airflow"] not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_om_is_a_failure(
    pyz: Path, broker: BrokerProcess, oidc_provider: OidcProvider
) -> None:
    """No OM at --server: exit 1 and a FAIL line naming --server (the workflow's hostPort)."""
    with CASES[0].server(oidc_provider.jwks_uri) as om:
        pass
    result = doctor("server", pyz, broker, om)
    assert result.returncode == 1
    assert "FAIL OM unreachable" in result.stdout
    assert "hostPort" in result.stdout


def test_min_ttl_beyond_the_grant_is_a_broker_refusal(
    pyz: Path, broker: BrokerProcess, oidc_provider: OidcProvider
) -> None:
    """A --min-ttl the broker cannot honour: exit 1 before OM is asked, with the broker's reason."""
    with CASES[0].server(oidc_provider.jwks_uri) as om:
        result = doctor("server", pyz, broker, om, "--min-ttl", "5h")
        assert not om.requests
    assert result.returncode == 1
    assert "FAIL no token from the broker: broker refused" in result.stdout
