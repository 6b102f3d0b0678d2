"""``token-broker --version``, ``serve --host/--port/--workers`` and ``new-key --json``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from service import __version__
from tests.support import OidcProvider, free_port
from tests.support.broker import write_config
from tests.support.broker_process import broker_env, run_cli, stop_broker, wait_ready


def test_version_prints_the_package_version_and_exits_0() -> None:
    """--version prints the installed distribution's version, which is service.__version__."""
    result = run_cli(["--version"], broker_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"token-broker {version('token-broker')}\n"
    assert version("token-broker") == __version__


def test_new_key_json_prints_the_key_once_with_its_hash() -> None:
    """new-key --json: one JSON object {caller, key, api_key_sha256}, the hash of that key."""
    result = run_cli(["new-key", "--caller", "airflow", "--json"], broker_env())
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert set(body) == {"caller", "key", "api_key_sha256"}
    assert body["caller"] == "airflow"
    assert body["api_key_sha256"] == hashlib.sha256(body["key"].encode()).hexdigest()
    assert result.stdout.count(body["key"]) == 1


def test_serve_flags_override_the_environment(tmp_path: Path, issuer: OidcProvider) -> None:
    """serve --host/--port/--workers win over TOKEN_BROKER_HOST/PORT/WORKERS."""
    files = write_config(tmp_path, issuer)
    port = free_port()
    env = broker_env(
        TOKEN_BROKER_CONFIG=str(files.config),
        TOKEN_BROKER_HOST="192.0.2.1",  # not ours: binding it would fail
        TOKEN_BROKER_PORT=str(free_port()),
        TOKEN_BROKER_WORKERS="64",
    )
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", "1"]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log)
    finally:
        stop_broker(process)


def test_serve_rejects_out_of_range_flags(tmp_path: Path) -> None:
    """serve --port 70000 and --workers 0 are usage errors (exit 2) before anything starts."""
    for flags in (["--port", "70000"], ["--workers", "0"]):
        result = run_cli(["serve", *flags], broker_env(), tmp_path)
        assert result.returncode == 2, result.stderr
        assert flags[0] in result.stderr
