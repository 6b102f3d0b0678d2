# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""A real ``python -m service serve`` subprocess on loopback, for tests of runner-side code.

``start_broker`` / ``wait_ready`` are the low-level pieces (used by test_replicas.py to run
several replicas on one Redis); ``BrokerProcess`` wraps them for one broker that a test can
stop and start again on the same port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from tests.support.broker import BrokerFiles, write_config
from tests.support.processes import OidcProvider, free_port

READY_TIMEOUT_SECONDS = 20.0
CLI_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def broker_env(**values: str) -> dict[str, str]:
    """The current environment minus every TOKEN_BROKER_* and proxy variable, plus ``values``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TOKEN_BROKER_") and name.lower() not in {"http_proxy", "all_proxy"}
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(values)
    return env


def start_broker(
    files: BrokerFiles,
    log: Path,
    *,
    redis_url: str | None = None,
    cache_key: str | None = None,
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m service serve`` on 127.0.0.1 (Redis only when ``redis_url``).

    ``extra_env`` adds (or overrides) environment variables, e.g. ``TOKEN_BROKER_*`` tunables.
    Its stdout and stderr (JSON log lines, DEBUG) are appended to ``log``. Returns the process
    (its own session, so its group can be signalled) and its base URL.
    """
    port = port or free_port()
    env = broker_env(
        TOKEN_BROKER_CONFIG=str(files.config),
        TOKEN_BROKER_HOST="127.0.0.1",
        TOKEN_BROKER_PORT=str(port),
        TOKEN_BROKER_LOG_LEVEL="DEBUG",
    )
    if redis_url is not None:
        env["TOKEN_BROKER_REDIS_URL"] = redis_url
    if cache_key is not None:
        env["TOKEN_BROKER_CACHE_KEYS"] = cache_key
    env.update(extra_env or {})
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait (bounded) until ``GET /readyz`` answers 200; fail the test with the log if not."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"broker exited: {log.read_text()[-2000:]}")
            try:
                if client.get(url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    pytest.fail(f"broker not ready: {log.read_text()[-2000:]}")


def stop_broker(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the broker's process group; SIGKILL it if it does not exit in time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)


class BrokerProcess:
    """One broker subprocess (in-process cache) that can be stopped and restarted on its port."""

    def __init__(self, files: BrokerFiles, log: Path) -> None:
        self.files = files
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it on :attr:`port` and wait until it is ready."""
        self.process, _ = start_broker(self.files, self.log, port=self.port)
        try:
            wait_ready(self.url, self.process, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop it (its in-process token cache goes with it)."""
        process, self.process = self.process, None
        if process is not None:
            stop_broker(process)

    def audit_lines(self) -> list[dict[str, Any]]:
        """The audit JSON lines the process has written to its log so far."""
        lines = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("logger") == "token_broker.audit":
                    lines.append(record)
        return lines

    def wait_for_audit(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first audit line ``match`` accepts, waiting (bounded) for the async log writer."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.audit_lines():
                if match(record):
                    return record
            if time.monotonic() > deadline:
                pytest.fail(f"no matching audit line: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_cli(
    args: list[str], env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m service ARGS`` with exactly ``env``, in ``cwd``, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def module_broker(
    issuer: OidcProvider, directory: Path, files: BrokerFiles | None = None
) -> Iterator[BrokerProcess]:
    """A broker subprocess on the session issuer (restarted and fault-free), for one module.

    ``files`` defaults to ``write_config(directory, issuer)``.
    """
    if not issuer.is_running():
        issuer.restart()
    issuer.proxy.set_fault(None)
    config = files or write_config(directory, issuer)
    with BrokerProcess(config, directory / "broker.log") as proc:
        yield proc
