"""``token-broker sidecar`` as a real subprocess against real broker subprocesses.

The long-lived tests use the session oidc-provider (1 h tokens); the outage test runs its own
provider issuing 10 s tokens so that refreshes, retries and expiry happen within seconds.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.observe.audit import fingerprint
from tests.support import OidcProvider, free_port, start_oidc_provider, verify_access_token
from tests.support.broker import write_config
from tests.support.broker_process import BrokerProcess, broker_env, module_broker

TIMEOUT = 30
SHORT_TTL = 10


class Sidecar:
    """``python -m service sidecar ARGS`` in its own session, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "sidecar", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> int:
        """SIGTERM; its exit status (SIGKILL and fail if it does not exit within 10 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
                pytest.fail("sidecar ignored SIGTERM")
        return self.process.returncode

    def events(self) -> list[dict[str, Any]]:
        """Its JSON log lines."""
        lines = []
        for line in self.log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                lines.append(record)
        return lines


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` every 0.1 s until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def get(url: str) -> httpx.Response | None:
    """GET ``url`` without proxies; None when nothing answers."""
    try:
        return httpx.get(url, timeout=2, trust_env=False)
    except httpx.HTTPError:
        return None


def claims_of(token: str) -> dict[str, Any]:
    """The unverified payload of a JWT."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def start_sidecar(broker: BrokerProcess, tmp_path: Path, *args: str) -> Sidecar:
    """A sidecar for profile ingestion talking to ``broker`` as the airflow caller."""
    env = broker_env(
        TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL=broker.files.keys["airflow"]
    )
    return Sidecar(["--profile", "ingestion", *args], env, tmp_path / "sidecar.log")


def run_sidecar(
    broker_url: str, key: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``sidecar --profile ingestion ARGS`` to completion (for --once), bounded in time."""
    env = broker_env(TOKEN_BROKER_URL=broker_url, TOKEN_BROKER_CREDENTIAL=key)
    return subprocess.run(
        [sys.executable, "-m", "service", "sidecar", "--profile", "ingestion", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def broker(
    oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker subprocess for this module on the session issuer (1 h tokens)."""
    with module_broker(oidc_provider, tmp_path_factory.mktemp("sidecar-broker")) as proc:
        yield proc


def test_sidecar_keeps_the_file_and_serves_token_and_oauth2_facade(
    broker: BrokerProcess, tmp_path: Path, oidc_provider: OidcProvider
) -> None:
    """File 0600 == GET /token == /oauth2/token answer to an OM 1.2 custom-oidc form post."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    target = tmp_path / "token"
    sidecar = start_sidecar(
        broker, tmp_path, "--write", str(target), "--listen", f"127.0.0.1:{port}"
    )
    try:
        wait_until(
            lambda: (r := get(base + "/healthz")) is not None and r.status_code == 200, "token"
        )
        served = httpx.get(base + "/token", trust_env=False, timeout=5)
        # What OpenMetadata 1.2 custom-oidc sends: a form body with its id and secret, no Basic.
        facade = httpx.post(
            base + "/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": "om", "client_secret": "x"},
            trust_env=False,
            timeout=5,
        )
        refused = httpx.post(
            base + "/oauth2/token", data={"grant_type": "password"}, trust_env=False, timeout=5
        )
    finally:
        status = sidecar.stop()
    assert status == 0
    token = target.read_text()
    verify_access_token(token, oidc_provider.jwks())
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert served.status_code == 200
    assert served.text == token
    assert served.headers["cache-control"] == "no-store"
    assert facade.status_code == 200
    answer = facade.json()
    assert answer["access_token"] == token
    assert answer["token_type"] == "Bearer"
    assert isinstance(answer["expires_in"], int)
    assert answer["expires_in"] > 120
    assert facade.headers["cache-control"] == "no-store"
    assert refused.status_code == 400
    assert refused.json()["error"] == "unsupported_grant_type"
    assert broker.wait_for_audit(lambda r: r.get("fingerprint") == fingerprint(token))
    log = sidecar.log.read_text()
    assert fingerprint(token) in log
    assert token not in log
    assert broker.files.keys["airflow"] not in log


def test_once_writes_the_file_and_exits_0(broker: BrokerProcess, tmp_path: Path) -> None:
    """--once fetches a token satisfying --min-ttl, writes it 0600 and exits 0."""
    target = tmp_path / "token"
    key = broker.files.keys["airflow"]
    result = run_sidecar(
        broker.url, key, tmp_path, "--once", "--write", str(target), "--min-ttl", "30m"
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert claims_of(target.read_text())["exp"] > time.time() + 1800
    assert target.read_text() not in result.stdout + result.stderr


def test_once_fails_when_min_ttl_cannot_be_satisfied(broker: BrokerProcess, tmp_path: Path) -> None:
    """--once --min-ttl 2h against 1 h tokens: the broker says 400, exit 1 at once, no file."""
    target = tmp_path / "token"
    started = time.monotonic()
    key = broker.files.keys["airflow"]
    result = run_sidecar(
        broker.url, key, tmp_path, "--once", "--write", str(target), "--min-ttl", "2h"
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert not target.exists()
    assert "min_ttl 7200 s cannot be satisfied" in result.stderr
    assert key not in result.stderr


def test_once_fails_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    """--once with nothing listening retries within --timeout, then exits 1 with no file."""
    target = tmp_path / "token"
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_sidecar(
        url, "tbk_0badf00d_x-NotARealKey", tmp_path, "--once", "--write", str(target),
        "--timeout", "2s", "--max-backoff", "1s",
    )  # fmt: skip
    assert result.returncode == 1
    assert time.monotonic() - started < 15
    assert not target.exists()
    assert "unreachable" in result.stderr
    assert "NotARealKey" not in result.stderr


def test_sidecar_refuses_a_non_loopback_listen_address(tmp_path: Path) -> None:
    """--listen on a routable address is refused with a clear message (exit 2)."""
    result = run_sidecar(
        "http://127.0.0.1:1",
        "k",
        tmp_path,
        "--write",
        str(tmp_path / "t"),
        "--listen",
        "0.0.0.0:8099",
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr


# -- the broker goes away and comes back -------------------------------------------------------


@pytest.fixture(scope="module")
def short_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """A dedicated oidc-provider whose access tokens live SHORT_TTL seconds."""
    provider = start_oidc_provider(
        tmp_path_factory.mktemp("short-issuer"), access_token_ttl=SHORT_TTL
    )
    try:
        yield provider
    finally:
        provider.stop()


def test_sidecar_survives_the_broker_going_down_and_recovers(
    short_issuer: OidcProvider, tmp_path: Path
) -> None:
    """Broker stopped: the valid token is still served; broker back: a new token; never expired."""
    broker = BrokerProcess(write_config(tmp_path, short_issuer), tmp_path / "broker.log")
    broker.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    target = tmp_path / "token"
    sidecar = start_sidecar(
        broker, tmp_path, "--write", str(target), "--listen", f"127.0.0.1:{port}",
        "--max-backoff", "1s",
    )  # fmt: skip
    served: list[tuple[float, str]] = []

    def poll() -> str | None:
        asked = time.time()
        response = get(base + "/token")
        if response is not None and response.status_code == 200:
            served.append((asked, response.text))
            return response.text
        return None

    try:
        wait_until(lambda: poll() is not None, "the first token")
        first = served[-1][1]
        broker.stop()
        # The broker is gone; the token it handed out is still good and still served.
        assert poll() == first
        health = get(base + "/healthz")
        assert health is not None
        assert health.status_code == 200

        def refresh_failed() -> bool:
            poll()
            return any(e.get("event") == "sidecar_refresh_failed" for e in sidecar.events())

        wait_until(refresh_failed, "a failed refresh while the broker is down")
        broker.start()
        wait_until(lambda: poll() not in {None, first}, "a new token after the broker returned")
        second = served[-1][1]
        health = get(base + "/healthz")
    finally:
        status = sidecar.stop()
        broker.stop()
    assert status == 0
    assert second != first
    assert target.read_text() == second
    assert health is not None
    assert health.status_code == 200
    verify_access_token(second, short_issuer.jwks())
    # Every token the sidecar handed out was still valid when it was handed out.
    assert served
    for asked, token in served:
        assert claims_of(token)["exp"] > asked
    log = sidecar.log.read_text()
    for _, token in served:
        assert token not in log
    assert broker.files.keys["airflow"] not in log
