"""The processes a benchmark runs against, all on 127.0.0.1, each stopped in ``Stack.stop``.

A real ``redis-server``, the npm ``oidc-provider`` behind the counting proxy (tests/support)
and ``python -m service serve`` subprocesses with the bench endpoints on. Brokers are started
with the launcher the integration tests use (tests/integration/broker_process.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.store.crypto import new_cache_key
from tests.integration.broker_process import start_broker, stop_broker
from tests.integration.conftest import BrokerFiles, write_config
from tests.support.processes import OidcProvider, RedisServer, start_oidc_provider, start_redis

READY_TIMEOUT_SECONDS = 20.0
HTTP_OK = 200
PROFILE = "ingestion"
CALLER = "airflow"

# Every broker of a benchmark: bench endpoints on, no per-caller rate limit (it would throttle
# the load), audit lines on (INFO, as in production) unless a figure says otherwise.
BENCH_ENV = {
    "TOKEN_BROKER_BENCH_ENDPOINTS": "true",
    "TOKEN_BROKER_RATE_LIMIT_PER_MINUTE": "0",
    "TOKEN_BROKER_LOG_LEVEL": "INFO",
}


class BenchError(Exception):
    """The benchmark could not be set up or a measurement is invalid; the message says why."""


@dataclass
class Broker:
    """One ``token-broker serve`` subprocess."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes: the process itself with one worker, else its children."""
        children = _children(self.process.pid)
        return children or [self.process.pid]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text(encoding="ascii")
            found.extend(int(part) for part in text.split())
    return found


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


@dataclass
class Stack:
    """What a benchmark started (to stop it again)."""

    workdir: Path
    provider: OidcProvider | None = None
    redis: RedisServer | None = None
    files: BrokerFiles | None = None
    cache_key: str = field(default_factory=new_cache_key)
    brokers: list[Broker] = field(default_factory=list)

    def start_issuer(self, access_token_ttl: int) -> OidcProvider:
        """(Re)start the issuer with tokens living ``access_token_ttl`` s; write a broker YAML."""
        self.stop_issuer()
        directory = self.workdir / f"ttl-{access_token_ttl}"
        directory.mkdir(parents=True, exist_ok=True)
        self.provider = start_oidc_provider(directory / "idp", access_token_ttl=access_token_ttl)
        self.files = write_config(directory, self.provider)
        return self.provider

    def start_redis(self) -> RedisServer:
        """Start the shared Redis (once)."""
        if self.redis is None:
            self.redis = start_redis(self.workdir / "redis")
        return self.redis

    def start_broker(self, name: str, env: Mapping[str, str] | None = None) -> Broker:
        """A broker on the current issuer and Redis, waited for on ``GET /readyz``."""
        if self.files is None or self.redis is None:
            raise BenchError("start the issuer and Redis before a broker")
        log = self.workdir / f"broker-{name}.log"
        process, url = start_broker(
            self.files,
            log,
            redis_url=self.redis.url,
            cache_key=self.cache_key,
            extra_env={**BENCH_ENV, **(env or {})},
        )
        broker = Broker(process, url, log)
        self.brokers.append(broker)
        wait_ready(broker)
        return broker

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

    def stop(self) -> None:
        """Stop everything, brokers first; each step bounded, each failure reported."""
        for broker in list(self.brokers):
            try:
                self.stop_broker(broker)
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"warning: could not stop broker pid {broker.process.pid}: {exc}")  # noqa: T201
        for name, stop in (("oidc-provider", self.stop_issuer), ("redis-server", self._stop_redis)):
            try:
                stop()
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"warning: could not stop {name}: {exc}")  # noqa: T201

    def _stop_redis(self) -> None:
        redis, self.redis = self.redis, None
        if redis is not None:
            redis.stop()

    def api_key(self, caller: str = CALLER) -> str:
        """The API key of ``caller`` in the current broker YAML."""
        if self.files is None:
            raise BenchError("no broker YAML yet")
        return self.files.keys[caller]


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def shrink_log(path: Path, keep_bytes: int = 1 << 20) -> None:
    """Keep only the last ``keep_bytes`` of a (possibly huge, audit-line) log."""
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        if size > keep_bytes:
            with path.open("rb") as source:
                source.seek(size - keep_bytes)
                data = source.read()
            path.write_bytes(data)


def wait_ready(broker: Broker) -> None:
    """Wait (bounded) for ``GET /readyz`` == 200; BenchError with the log tail otherwise."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if broker.process.poll() is not None:
                code = broker.process.returncode
                raise BenchError(f"broker {broker.url} exited ({code}):\n{tail(broker.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(broker.url + "/readyz").status_code == HTTP_OK:
                    return
            time.sleep(0.1)
    raise BenchError(f"broker {broker.url} not ready in {READY_TIMEOUT_SECONDS:.0f} s")


def handouts(broker: Broker) -> float:
    """``token_broker_handouts_total{outcome="issued"}`` of ``broker`` (summed over profiles)."""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        text = client.get(broker.url + "/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "token_broker_handouts":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("outcome") == "issued":
                total += sample.value
    return total
