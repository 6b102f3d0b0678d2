# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""One process stack on 127.0.0.1: Redis, the issuer behind its proxy, N broker replicas.

Shared by tests, ``make bench`` (bench/stack.py) and ``make soak`` (scripts/soak.py). Every
start waits (bounded) until the process answers; ``Stack.stop`` stops what was started,
brokers first, each step bounded and each failure reported rather than raised.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.store.crypto import new_cache_key
from tests.support.broker import BrokerFiles, write_config
from tests.support.broker_process import start_broker, stop_broker
from tests.support.processes import OidcProvider, RedisServer, start_oidc_provider, start_redis

READY_TIMEOUT_SECONDS = 20.0
HTTP_OK = 200
CALLER = "airflow"


class StackError(Exception):
    """A process of the stack could not be started or is not ready; the message says why."""


@dataclass
class Broker:
    """One ``token-broker serve`` subprocess of a stack."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes: the process itself with one worker, else its children."""
        return _children(self.process.pid) or [self.process.pid]


def _children(pid: int) -> list[int]:
    """The child pids of ``pid`` (from /proc; empty where /proc has none)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text(encoding="ascii")
            found.extend(int(part) for part in text.split())
    return found


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (``<no log>`` when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(broker: Broker, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Wait (bounded) for ``GET /readyz`` == 200; StackError with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if broker.process.poll() is not None:
                code = broker.process.returncode
                raise StackError(f"broker {broker.url} exited ({code}):\n{tail(broker.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(broker.url + "/readyz").status_code == HTTP_OK:
                    return
            time.sleep(0.1)
    raise StackError(f"broker {broker.url} was not ready in {timeout:.0f} s:\n{tail(broker.log)}")


@dataclass
class Stack:
    """What was started under ``workdir`` (to stop it again); brokers share Redis and a key."""

    workdir: Path
    provider: OidcProvider | None = None
    redis: RedisServer | None = None
    files: BrokerFiles | None = None
    cache_key: str = field(default_factory=new_cache_key)
    brokers: list[Broker] = field(default_factory=list)
    broker_env: Mapping[str, str] = field(default_factory=dict)

    def start_issuer(self, access_token_ttl: int, directory: Path | None = None) -> OidcProvider:
        """(Re)start the issuer (tokens live ``access_token_ttl`` s) and write a broker YAML.

        Both go to ``directory`` (default ``workdir/ttl-<ttl>``): the issuer under ``idp/``.
        """
        self.stop_issuer()
        directory = directory or self.workdir / f"ttl-{access_token_ttl}"
        directory.mkdir(parents=True, exist_ok=True)
        self.provider = start_oidc_provider(directory / "idp", access_token_ttl=access_token_ttl)
        self.files = write_config(directory, self.provider)
        return self.provider

    def start_redis(self) -> RedisServer:
        """Start the shared Redis (once)."""
        if self.redis is None:
            self.redis = start_redis(self.workdir / "redis")
        return self.redis

    def launch_broker(self, name: str, env: Mapping[str, str] | None = None) -> Broker:
        """Start a broker on the current issuer and Redis, without waiting for it."""
        if self.files is None or self.redis is None:
            raise StackError("start the issuer and Redis before a broker")
        log = self.workdir / f"broker-{name}.log"
        process, url = start_broker(
            self.files,
            log,
            redis_url=self.redis.url,
            cache_key=self.cache_key,
            extra_env={**self.broker_env, **(env or {})},
        )
        broker = Broker(process, url, log)
        self.brokers.append(broker)
        return broker

    def start_broker(self, name: str, env: Mapping[str, str] | None = None) -> Broker:
        """A broker on the current issuer and Redis, waited for on ``GET /readyz``."""
        broker = self.launch_broker(name, env)
        wait_ready(broker)
        return broker

    def start_brokers(self, count: int, env: Mapping[str, str] | None = None) -> list[Broker]:
        """``count`` replicas named 0..count-1, all launched first, then each waited for."""
        started = [self.launch_broker(str(index), env) for index in range(count)]
        for broker in started:
            wait_ready(broker)
        return started

    def stop_broker(self, broker: Broker) -> None:
        """Stop one broker (bounded; SIGKILL after a while)."""
        with contextlib.suppress(ValueError):
            self.brokers.remove(broker)
        stop_broker(broker.process)

    def stop_issuer(self) -> None:
        """Stop the issuer and its proxy, if running."""
        provider, self.provider = self.provider, None
        if provider is not None:
            provider.stop()

    def stop_redis(self) -> None:
        """Stop the shared Redis, if running."""
        redis, self.redis = self.redis, None
        if redis is not None:
            redis.stop()

    def stop(self) -> None:
        """Stop everything, brokers first; each step bounded, each failure reported."""
        for broker in list(self.brokers):
            try:
                self.stop_broker(broker)
            except (OSError, subprocess.SubprocessError) as exc:
                _warn(f"could not stop broker pid {broker.process.pid}: {exc}")
        for name, stop in (("oidc-provider", self.stop_issuer), ("redis-server", self.stop_redis)):
            try:
                stop()
            except (OSError, subprocess.SubprocessError) as exc:
                _warn(f"could not stop {name}: {exc}")

    def api_key(self, caller: str = CALLER) -> str:
        """The API key of ``caller`` in the current broker YAML."""
        if self.files is None:
            raise StackError("no broker YAML yet")
        return self.files.keys[caller]


def _warn(message: str) -> None:
    """A cleanup problem, on stdout where bench and soak print their progress."""
    print(f"warning: {message}")
