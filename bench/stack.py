"""The processes a benchmark runs against: the shared stack of tests/support/stack.py.

A real ``redis-server``, the npm ``oidc-provider`` behind the counting proxy and
``python -m service serve`` subprocesses, all on 127.0.0.1, each stopped in ``Stack.stop``;
here only what a benchmark adds: the bench endpoints on, and its measurements of a broker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import stack as shared
from tests.support.stack import HTTP_OK, Broker, tail, wait_ready
from tests.support.stack import StackError as BenchError

__all__ = [
    "BENCH_ENV",
    "CALLER",
    "HTTP_OK",
    "PROFILE",
    "BenchError",
    "Broker",
    "Stack",
    "handouts",
    "rss_mb",
    "shrink_log",
    "tail",
    "wait_ready",
]

PROFILE = "ingestion"
CALLER = shared.CALLER

# Every broker of a benchmark: bench endpoints on, no per-caller rate limit (it would throttle
# the load), audit lines on (INFO, as in production) unless a figure says otherwise.
BENCH_ENV = {
    "TOKEN_BROKER_BENCH_ENDPOINTS": "true",
    # Production shape: the per-caller limit on, set where this load never reaches it.
    "TOKEN_BROKER_RATE_LIMIT_PER_MINUTE": "100000000",
    "TOKEN_BROKER_LOG_LEVEL": "INFO",
}


@dataclass
class Stack(shared.Stack):
    """The shared stack with every broker started in ``BENCH_ENV``."""

    broker_env: Mapping[str, str] = field(default_factory=lambda: dict(BENCH_ENV))


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def shrink_log(path: Path, keep_bytes: int = 1 << 20) -> None:
    """Keep only the last ``keep_bytes`` of a (possibly huge, audit-line) log."""
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        if size > keep_bytes:
            with path.open("rb") as source:
                source.seek(size - keep_bytes)
                data = source.read()
            path.write_bytes(data)


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
