# ruff: noqa: T201
"""``make soak``: replicas, Redis and a real issuer under sustained load, with faults injected.

Not part of ``make test`` or CI: it runs for a while (``--duration``, default 60 s) and needs
the whole machine. Everything listens on 127.0.0.1 only:

* a real ``redis-server``;
* the npm ``oidc-provider`` (tests/idp) behind the counting, fault-injecting proxy
  (tests/support/proxy.py), issuing tokens that live ``--token-ttl`` seconds, so the brokers
  refresh them during the run;
* ``--replicas`` ``token-broker serve`` processes sharing that Redis and one cache key;
* ``--clients`` concurrent async HTTP clients asking ``POST /v1/token`` round-robin over the
  replicas, for two callers and four scope sets, for the whole duration.

Injected while the load runs (each window bounded; times printed and written to the summary):

* an issuer outage at ~20 % of the run: the proxy answers 503, then hangs, then resets the
  connection, one third of the outage each. It is moved to start just before the brokers'
  next background refresh (computed from the tokens handed out so far), so the refresh really
  meets the outage, and it is no longer than a cached token can cover: every request must
  still get a token;
* a Redis crash at ~60 % of the run (SIGKILL, ``--redis-down`` seconds down, restarted on the
  same port with no data), likewise moved to just before a refresh when one is near.

The broker's time constants are scaled to the short token life (a real token lives an hour,
a soak token half a minute); they are printed with the summary and can be overridden with
``--broker-env NAME=VALUE``. The caller rate limit stays on with a limit that is never reached,
so every hand-out still goes through the shared Redis counter (and survives its crash).

The summary (requests, errors by status and transport error, requests/s, latency
percentiles, issuer token requests against the expected minimum per cache key, /readyz
states over time, the injected events) is printed and written to ``.soak/latest.json``;
logs are left in ``.soak/``. Exit status: 0 when every request got a token, 1 when any did
not (any non-200, transport error, or an expired token), 2 for bad arguments or when the
soak could not be set up, 130 on Ctrl-C / SIGTERM. Every process started here is stopped
again in all cases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import math
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from scripts.demo import signals_ignored
from tests.support.broker import BrokerFiles
from tests.support.processes import (
    CountingProxy,
    Fault,
    OidcProvider,
    ServiceError,
    ensure_node_modules,
)
from tests.support.stack import Stack, StackError

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / ".soak"
SUMMARY = WORKDIR / "latest.json"
PROFILE = "ingestion"

MAX_DURATION_SECONDS = 3600.0
MIN_DURATION_SECONDS = 10.0
MAX_CLIENTS = 1000
MAX_REPLICAS = 8
MIN_TOKEN_TTL = 20
MAX_TOKEN_TTL = 3600
MAX_REQUESTS_PER_CLIENT = 5_000_000
READY_POLL_SECONDS = 0.5
READY_REQUEST_TIMEOUT_SECONDS = 2.0
SCRAPE_TIMEOUT_SECONDS = 5.0
HTTP_OK = 200
MAX_FAILURE_SAMPLES = 40
MAX_PRINTED_FAILURES = 8
MAX_PRINTED_GROUPS = 15
RETRY_AFTER_MARK = " Retry-After="
TIMELINE_ROWS = 20
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SETUP = 2
EXIT_INTERRUPTED = 130

# Broker settings scaled to soak-length tokens (defaults in service/config/settings.py). A real
# deployment keeps a 30 s circuit reset against hour-long tokens; here a token's whole
# refresh-to-expiry margin is a few seconds, so the recovery path must be as short.
SOAK_BROKER_ENV = {
    "TOKEN_BROKER_LOG_LEVEL": "INFO",
    "TOKEN_BROKER_RATE_LIMIT_PER_MINUTE": "1000000000",
    "TOKEN_BROKER_UPSTREAM_TIMEOUT_SECONDS": "3",
    "TOKEN_BROKER_UPSTREAM_DEADLINE_SECONDS": "6",
    "TOKEN_BROKER_WAIT_TIMEOUT_SECONDS": "10",
    "TOKEN_BROKER_UPSTREAM_BACKOFF_MAX_SECONDS": "0.5",
    "TOKEN_BROKER_CIRCUIT_RESET_SECONDS": "1",
}
DEFAULT_REFRESH_FRACTION = 2 / 3
DEFAULT_MAX_SKEW_SECONDS = 30.0

# The issuer outage starts this long before the refresh point it is aimed at, and leaves
# this much of the cached token's remaining life for recovery (circuit reset, backoff and
# the exchange itself come on top).
OUTAGE_LEAD_SECONDS = 1.5
RECOVERY_SLACK_SECONDS = 1.5
OUTAGE_AT, OUTAGE_SHARE, OUTAGE_LATEST = 0.2, 0.2, 0.55
REDIS_AT, REDIS_LATEST = 0.6, 0.9
EVENT_GAP_SECONDS = 2.0
OUTAGE_FAULTS: tuple[Fault, ...] = ("error503", "hang", "reset")

# (caller, requested scopes); None asks for everything the caller's grant allows.
# write_config's callers: airflow may have every profile scope, reader only "read".
MIX: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("airflow", ("ingestion",)),
    ("airflow", ("read",)),
    ("airflow", ("ingestion", "read")),
    ("airflow", None),
    ("reader", None),
    ("reader", ("read",)),
)


class SoakError(Exception):
    """The soak could not be set up; the message says why (never a secret)."""


# -- options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, validated."""

    clients: int
    duration: float
    replicas: int
    token_ttl: int
    redis_down: float
    request_timeout: float
    think_ms: float
    broker_env: dict[str, str]

    def env_float(self, name: str, default: float) -> float:
        """A TOKEN_BROKER_* value the brokers will run with, as a number."""
        return float(self.broker_env.get(name, default))

    @property
    def refresh_fraction(self) -> float:
        """Share of a token's life after which the brokers refresh it."""
        return self.env_float("TOKEN_BROKER_REFRESH_FRACTION", DEFAULT_REFRESH_FRACTION)

    @property
    def refresh_interval(self) -> float:
        """Seconds between two issuer exchanges for one cache key, at best."""
        return self.token_ttl * self.refresh_fraction

    @property
    def skew(self) -> float:
        """The brokers' safety margin before expiry (service.core.broker.Broker.skew)."""
        max_skew = self.env_float("TOKEN_BROKER_MAX_SKEW_SECONDS", DEFAULT_MAX_SKEW_SECONDS)
        return min(max_skew, self.token_ttl / 10)

    @property
    def cover_seconds(self) -> float:
        """How long a cached token stays usable after its refresh point."""
        return self.token_ttl * (1 - self.refresh_fraction) - self.skew

    @property
    def outage_seconds(self) -> float:
        """Total issuer outage: ~20 % of the run, but no longer than a cached token covers."""
        recovery = (
            self.env_float("TOKEN_BROKER_CIRCUIT_RESET_SECONDS", 30.0)
            + self.env_float("TOKEN_BROKER_UPSTREAM_BACKOFF_MAX_SECONDS", 5.0)
            + RECOVERY_SLACK_SECONDS
        )
        coverable = self.cover_seconds + OUTAGE_LEAD_SECONDS - recovery
        return max(0.9, min(OUTAGE_SHARE * self.duration, coverable))


def _bounded(kind: type[float | int], low: float, high: float) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}")
        return value

    return parse


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("TOKEN_BROKER_"):
        raise argparse.ArgumentTypeError("expected TOKEN_BROKER_NAME=VALUE")
    return name, value


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse and validate the command line (argparse exits 2 on a bad one)."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.soak",
        description="Soak the token broker: replicas, Redis and a real issuer under load, "
        "with an issuer outage and a Redis crash injected.",
        epilog="Exit status: 0 when every request got a token, 1 when any did not, 2 for bad "
        "arguments or a soak that could not be set up, 130 when interrupted. The summary is "
        "also written to .soak/latest.json; logs stay in .soak/.",
    )
    parser.add_argument(
        "--clients", type=_bounded(int, 1, MAX_CLIENTS), default=50, help="concurrent clients"
    )
    parser.add_argument(
        "--duration",
        type=_bounded(float, MIN_DURATION_SECONDS, MAX_DURATION_SECONDS),
        default=60.0,
        help=f"seconds of load (at most {MAX_DURATION_SECONDS:.0f})",
    )
    parser.add_argument(
        "--replicas", type=_bounded(int, 1, MAX_REPLICAS), default=2, help="broker processes"
    )
    parser.add_argument(
        "--token-ttl",
        type=_bounded(int, MIN_TOKEN_TTL, MAX_TOKEN_TTL),
        default=30,
        help="access token lifetime the issuer grants, seconds (short: refreshes happen)",
    )
    parser.add_argument(
        "--redis-down",
        type=_bounded(float, 0.5, 60),
        default=3.0,
        help="seconds Redis stays down after it is killed",
    )
    parser.add_argument(
        "--request-timeout",
        type=_bounded(float, 1, 120),
        default=15.0,
        help="per-request client timeout, seconds",
    )
    parser.add_argument(
        "--think-ms",
        type=_bounded(float, 0, 10_000),
        default=0.0,
        help="pause of each client between its requests (0: closed loop)",
    )
    parser.add_argument(
        "--broker-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="TOKEN_BROKER_NAME=VALUE",
        help="override a broker setting (repeatable)",
    )
    args = parser.parse_args(argv)
    options = Options(
        clients=args.clients,
        duration=args.duration,
        replicas=args.replicas,
        token_ttl=args.token_ttl,
        redis_down=args.redis_down,
        request_timeout=args.request_timeout,
        think_ms=args.think_ms,
        broker_env={**SOAK_BROKER_ENV, **dict(args.broker_env)},
    )
    try:
        if options.cover_seconds <= 0:
            parser.error("the refresh fraction and skew leave a cached token no life to cover")
    except ValueError:
        parser.error("a --broker-env value used for planning is not a number")
    return options


# -- what the run records -------------------------------------------------------------------


def key_label(scopes: Sequence[str]) -> str:
    """A readable cache-key name: profile and sorted scope set."""
    return f"{PROFILE} [{' '.join(sorted(scopes))}]"


@dataclass
class Stats:
    """Everything the clients, the poller and the fault injector saw (times: run-relative s)."""

    started: float
    wall_started: float
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    outcomes: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    per_replica: Counter[str] = field(default_factory=Counter)
    stale: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    failure_groups: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    failure_count: int = 0
    seconds: dict[int, list[float]] = field(default_factory=dict)
    tokens: dict[str, set[str]] = field(default_factory=dict)
    expiries: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    readiness: list[dict[str, Any]] = field(default_factory=list)
    issuer_samples: list[tuple[float, int]] = field(default_factory=list)
    finished: float = 0.0

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.started

    def event(self, name: str, **detail: Any) -> None:
        """Record (and print) an injected event."""
        at = round(self.now(), 2)
        self.events.append({"t": at, "event": name, **detail})
        extra = ", ".join(f"{k}={v}" for k, v in detail.items())
        print(f"  +{at:7.2f} s  {name}" + (f" ({extra})" if extra else ""), flush=True)

    def _second(self, at: float, latency_ms: float, *, failed: bool) -> None:
        row = self.seconds.setdefault(int(at), [0, 0, 0.0])
        row[0] += 1
        row[1] += failed
        row[2] = max(row[2], latency_ms)

    def ok(
        self, at: float, latency_ms: float, *, replica: str, key: str, body: bytes, source: str
    ) -> None:
        """A 200: its latency, source and token (its remaining life must be positive)."""
        data = orjson.loads(body)
        token = str(data.get("access_token", ""))
        if int(data.get("expires_in", 0)) <= 0:
            self.stale += 1
            self.fail(
                at,
                latency_ms,
                replica=replica,
                key=key,
                what="200 with an expired token",
                detail="",
            )
            return
        self.latencies_ms.append(latency_ms)
        self.per_replica[replica] += 1
        self.sources[source] += 1
        self.outcomes[str(HTTP_OK)] += 1
        self.tokens.setdefault(key, set()).add(token[-16:])
        self.expiries[key] = max(self.expiries.get(key, 0.0), float(data.get("expires_at", 0)))
        self._second(at, latency_ms, failed=False)

    def fail(
        self, at: float, latency_ms: float, *, replica: str, key: str, what: str, detail: str
    ) -> None:
        """A non-200, a transport error or an expired token."""
        self.latencies_ms.append(latency_ms)
        self.per_replica[replica] += 1
        self.outcomes[what] += 1
        self.failure_count += 1
        self._second(at, latency_ms, failed=True)
        body = detail.partition(RETRY_AFTER_MARK)[0][:160]  # one group whatever the Retry-After
        group = self.failure_groups.setdefault((what, body), [0, at, at])
        group[0] += 1
        group[2] = at
        if len(self.failures) < MAX_FAILURE_SAMPLES:
            self.failures.append(
                {
                    "t": round(at, 3),
                    "replica": replica,
                    "key": key,
                    "outcome": what,
                    "detail": detail[:300],
                    "latency_ms": round(latency_ms, 1),
                }
            )

    def next_refresh(self, options: Options, after: float) -> float | None:
        """Run-relative time of the first expected background refresh at or after ``after``."""
        candidates = []
        for expires_at in self.expiries.values():
            point = (
                expires_at - self.wall_started - options.token_ttl * (1 - options.refresh_fraction)
            )
            for _ in range(10_000):
                if point >= after:
                    break
                point += options.refresh_interval
            candidates.append(point)
        return min(candidates) if candidates else None


# -- processes ------------------------------------------------------------------------------


def start_stack(options: Options, stack: Stack) -> None:
    """Redis, the issuer behind its proxy, then the broker replicas (each waited for)."""
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    WORKDIR.chmod(0o700)
    ensure_node_modules()
    stack.start_issuer(options.token_ttl, directory=WORKDIR)
    stack.start_redis()
    stack.start_brokers(options.replicas, options.broker_env)


# -- the load -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One prepared request of the mix."""

    caller: str
    key: str
    body: bytes
    headers: dict[str, str]


def prepare(files: BrokerFiles, provider: OidcProvider) -> list[Request]:
    """The mix as ready-to-send bodies; each request's cache key worked out from the grants."""
    grant_scopes = {"airflow": tuple(provider.scopes), "reader": ("read",)}
    prepared = []
    for index, (caller, scopes) in enumerate(MIX):
        body: dict[str, Any] = {
            "profile": PROFILE,
            "labels": {"dag_id": "soak", "task_id": f"mix-{index}"},
        }
        if scopes is not None:
            body["scopes"] = list(scopes)
        prepared.append(
            Request(
                caller=caller,
                key=key_label(scopes if scopes is not None else grant_scopes[caller]),
                body=orjson.dumps(body),
                headers={
                    "Authorization": f"Bearer {files.keys[caller]}",
                    "Content-Type": "application/json",
                },
            )
        )
    return prepared


async def client_loop(
    number: int,
    http: httpx.AsyncClient,
    *,
    urls: Sequence[str],
    mix: Sequence[Request],
    stats: Stats,
    options: Options,
) -> None:
    """One client: requests back to back (or with --think-ms) until the run ends."""
    end = stats.started + options.duration
    pause = options.think_ms / 1000
    for sent in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= end:
            return
        request = mix[(number + sent) % len(mix)]
        replica = (number + sent // len(mix)) % len(urls)
        began = time.monotonic()
        try:
            response = await http.post(
                urls[replica] + "/v1/token", content=request.body, headers=request.headers
            )
        except httpx.HTTPError as exc:
            took = (time.monotonic() - began) * 1000
            what = f"transport {type(exc).__name__}"
            stats.fail(
                began - stats.started,
                took,
                replica=f"r{replica}",
                key=request.key,
                what=what,
                detail=str(exc),
            )
        else:
            took = (time.monotonic() - began) * 1000
            at = began - stats.started
            if response.status_code == HTTP_OK:
                source = response.headers.get("Token-Broker-Source", "?")
                stats.ok(
                    at,
                    took,
                    replica=f"r{replica}",
                    key=request.key,
                    body=response.content,
                    source=source,
                )
            else:
                detail = response.text
                if "Retry-After" in response.headers:
                    detail += f"{RETRY_AFTER_MARK}{response.headers['Retry-After']}"
                what = f"HTTP {response.status_code}"
                stats.fail(
                    at, took, replica=f"r{replica}", key=request.key, what=what, detail=detail
                )
        if pause:
            await asyncio.sleep(pause)


async def readiness_loop(
    urls: Sequence[str], proxy: CountingProxy, stats: Stats, options: Options
) -> None:
    """Poll every replica's /readyz, recording each change; sample the issuer request count."""
    last: dict[str, str] = {}
    end = stats.started + options.duration
    rounds = int(options.duration / READY_POLL_SECONDS) + 2
    async with httpx.AsyncClient(trust_env=False, timeout=READY_REQUEST_TIMEOUT_SECONDS) as http:
        for _ in range(rounds):
            if time.monotonic() >= end:
                return
            stats.issuer_samples.append((stats.now(), proxy.token_requests))
            for index, url in enumerate(urls):
                try:
                    response = await http.get(url + "/readyz")
                    state = (
                        str(orjson.loads(response.content).get("status"))
                        if response.status_code == HTTP_OK
                        else f"HTTP {response.status_code}"
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    state = f"unreachable ({type(exc).__name__})"
                replica = f"r{index}"
                if last.get(replica) != state:
                    last[replica] = state
                    stats.readiness.append(
                        {"t": round(stats.now(), 2), "replica": replica, "state": state}
                    )
            await asyncio.sleep(READY_POLL_SECONDS)


async def sleep_until(stats: Stats, at: float) -> None:
    """Sleep until run-relative time ``at`` (no-op when it has passed)."""
    delay = at - stats.now()
    if delay > 0:
        await asyncio.sleep(delay)


async def aligned_start(
    stats: Stats, options: Options, target: float, latest: float, length: float
) -> tuple[float, float | None]:
    """(start, refresh point aimed at): just before the next refresh if the window fits."""
    await sleep_until(stats, max(target - OUTAGE_LEAD_SECONDS, 1.0))
    refresh = stats.next_refresh(options, target)
    if refresh is not None and refresh - OUTAGE_LEAD_SECONDS + length <= latest:
        return max(target, refresh - OUTAGE_LEAD_SECONDS), refresh
    return target, None


async def fault_loop(stack: Stack, stats: Stats, options: Options, marks: dict[str, int]) -> None:
    """The faults; a fault that cannot be injected (Redis will not restart) fails the soak."""
    try:
        await inject_faults(stack, stats, options, marks)
    except (ServiceError, OSError, subprocess.SubprocessError) as exc:
        stats.problems.append(f"fault injection failed: {exc}")
        stats.event("fault injection failed", error=type(exc).__name__)


async def inject_faults(
    stack: Stack, stats: Stats, options: Options, marks: dict[str, int]
) -> None:
    """The issuer outage (503, hang, reset), then the Redis crash; every window bounded."""
    assert stack.provider is not None
    assert stack.redis is not None
    proxy = stack.provider.proxy
    duration = options.duration
    outage = options.outage_seconds
    start, refresh = await aligned_start(
        stats, options, OUTAGE_AT * duration, OUTAGE_LATEST * duration, outage
    )
    await sleep_until(stats, start)
    marks["outage_start"] = proxy.token_requests
    aimed = {"aimed_at_refresh": round(refresh, 2)} if refresh is not None else {}
    for index, fault in enumerate(OUTAGE_FAULTS):
        if index == 0:
            stats.event(f"issuer fault {fault}", window_s=round(outage / 3, 2), **aimed)
        else:
            stats.event(f"issuer fault {fault}", window_s=round(outage / 3, 2))
        proxy.set_fault(fault, delay_seconds=outage)
        await sleep_until(stats, start + outage * (index + 1) / len(OUTAGE_FAULTS))
    proxy.set_fault(None)
    marks["outage_end"] = proxy.token_requests
    stats.event("issuer restored")
    down = options.redis_down
    target = max(REDIS_AT * duration, stats.now() + EVENT_GAP_SECONDS)
    start, refresh = await aligned_start(stats, options, target, REDIS_LATEST * duration, down)
    await sleep_until(stats, start)
    aimed = {"aimed_at_refresh": round(refresh, 2)} if refresh is not None else {}
    await asyncio.to_thread(stack.redis.kill)
    stats.event("redis killed (SIGKILL)", down_s=down, **aimed)
    await sleep_until(stats, start + down)
    await asyncio.to_thread(stack.redis.start)
    stats.event("redis restarted on the same port (answers PING, empty)")


async def scrape_metrics(urls: Sequence[str]) -> dict[str, dict[str, float]]:
    """The broker counters worth a look in a soak, summed per replica and label set."""
    wanted = {
        "token_broker_handouts",
        "token_broker_cache_lookups",
        "token_broker_issuer_requests",
        "token_broker_circuit_rejections",
        "token_broker_redis_errors",
        "token_broker_rate_limited",
    }
    scraped: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(trust_env=False, timeout=SCRAPE_TIMEOUT_SECONDS) as http:
        for index, url in enumerate(urls):
            values: dict[str, float] = {}
            try:
                text = (await http.get(url + "/metrics")).text
            except httpx.HTTPError as exc:
                scraped[f"r{index}"] = {f"unreachable ({type(exc).__name__})": 0.0}
                continue
            for family in text_string_to_metric_families(text):
                if family.name not in wanted:
                    continue
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    name = family.name.removeprefix("token_broker_")
                    values[f"{name}{{{labels}}}" if labels else name] = sample.value
            scraped[f"r{index}"] = values
    return scraped


def new_client(options: Options) -> httpx.AsyncClient:
    """One client's own HTTP client: a connection per replica, kept alive, no proxies.

    One pool per client, not one shared pool: httpx scans every pooled connection on each
    request, which halves the throughput of a 50-client shared pool on this machine.
    """
    limits = httpx.Limits(
        max_connections=options.replicas, max_keepalive_connections=options.replicas
    )
    return httpx.AsyncClient(
        trust_env=False, timeout=options.request_timeout, limits=limits, verify=_tls()
    )


@functools.cache
def _tls() -> ssl.SSLContext:
    # Only plain http on loopback is used; one shared context spares each client loading
    # the CA bundle (~40 ms of CPU each) that httpx would otherwise load per client.
    return ssl.create_default_context()


async def run_load(
    stack: Stack, options: Options
) -> tuple[Stats, dict[str, int], dict[str, dict[str, float]]]:
    """``load`` with SIGTERM cancelling it cleanly (like Ctrl-C does under asyncio.run)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await load(stack, options)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # resets it to SIG_DFL
        signal.signal(signal.SIGTERM, _on_sigterm)


async def load(
    stack: Stack, options: Options
) -> tuple[Stats, dict[str, int], dict[str, dict[str, float]]]:
    """The clients, the readiness poller and the faults, all for ``options.duration``."""
    assert stack.files is not None
    assert stack.provider is not None
    urls = [broker.url for broker in stack.brokers]
    mix = prepare(stack.files, stack.provider)
    async with contextlib.AsyncExitStack() as exits:
        https = [
            await exits.enter_async_context(new_client(options)) for _ in range(options.clients)
        ]
        stats = Stats(started=time.monotonic(), wall_started=time.time())
        marks: dict[str, int] = {"start": stack.provider.proxy.token_requests}
        stats.event("load starts", clients=options.clients, replicas=options.replicas)
        async with asyncio.TaskGroup() as group:
            for number, http in enumerate(https):
                group.create_task(
                    client_loop(number, http, urls=urls, mix=mix, stats=stats, options=options)
                )
            group.create_task(readiness_loop(urls, stack.provider.proxy, stats, options))
            group.create_task(fault_loop(stack, stats, options, marks))
    stats.finished = stats.now()
    stats.issuer_samples.append((stats.finished, stack.provider.proxy.token_requests))
    stats.event("load ends")
    metrics = await scrape_metrics(urls)
    return stats, marks, metrics


# -- the summary ----------------------------------------------------------------------------


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def issuer_count_at(stats: Stats, at: float) -> int:
    """The proxy's token request count as last sampled at or before ``at``."""
    count = 0
    for sampled_at, value in stats.issuer_samples:
        if sampled_at > at:
            break
        count = value
    return count


def after_event(stats: Stats, at: float) -> str:
    """``+N.NN s after <the last injected event before at>``."""
    last = None
    for event in stats.events:
        if event["t"] > at:
            break
        last = event
    if last is None:
        return "before any event"
    return f"+{at - last['t']:.2f} s after '{last['event']}'"


def issuer_counts(provider: OidcProvider, marks: dict[str, int]) -> dict[str, dict[str, int]]:
    """Token requests per cache key as the proxy saw them: forwarded, and faulted (outage)."""
    per_key: dict[str, dict[str, int]] = {}
    start, stop = marks.get("outage_start", -1), marks.get("outage_end", -1)
    for index, request in enumerate(provider.proxy.token_request_log):
        scopes = request.form.get("scope", "").split()
        counts = per_key.setdefault(key_label(scopes), {"forwarded": 0, "faulted": 0})
        counts["faulted" if start <= index < stop else "forwarded"] += 1
    return per_key


def broker_warnings(stack: Stack) -> dict[str, dict[str, int]]:
    """Warning and error log lines per replica, counted by message."""
    counted: dict[str, dict[str, int]] = {}
    for index, broker in enumerate(stack.brokers):
        messages: Counter[str] = Counter()
        with (
            contextlib.suppress(OSError),
            broker.log.open(encoding="utf-8", errors="replace") as lines,
        ):
            for line in lines:
                if '"level":"warning"' not in line and '"level":"error"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                messages[f"{record.get('level')}: {record.get('message')}"] += 1
        counted[f"r{index}"] = dict(messages)
    return counted


def summarize(
    stack: Stack,
    options: Options,
    stats: Stats,
    marks: dict[str, int],
    metrics: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """The summary document (also what latest.json holds)."""
    assert stack.provider is not None
    ordered = sorted(stats.latencies_ms)
    total = len(ordered)
    elapsed = max(stats.finished, 1e-9)
    per_key = issuer_counts(stack.provider, marks)
    for key in {request.key for request in prepare_keys(stack)}:
        per_key.setdefault(key, {"forwarded": 0, "faulted": 0})
    expected_min = math.ceil(options.duration / options.refresh_interval)
    failed = stats.failure_count
    statuses = {k: v for k, v in stats.outcomes.items() if not k.startswith("transport ")}
    transport = {k: v for k, v in stats.outcomes.items() if k.startswith("transport ")}
    step = max(1, math.ceil(options.duration / TIMELINE_ROWS))
    timeline = []
    for begin in range(0, math.ceil(elapsed), step):
        rows = [stats.seconds.get(second, [0, 0, 0.0]) for second in range(begin, begin + step)]
        timeline.append(
            {
                "t": begin,
                "issuer_requests": issuer_count_at(stats, begin + step)
                - issuer_count_at(stats, begin),
                "rps": round(sum(r[0] for r in rows) / step, 1),
                "failed": int(sum(r[1] for r in rows)),
                "max_ms": round(max(r[2] for r in rows), 1),
            }
        )
    return {
        "result": "FAIL" if failed or stats.problems else "PASS",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stats.wall_started))
        + f".{int(stats.wall_started % 1 * 1000):03d}Z",
        "problems": stats.problems,
        "settings": {
            "clients": options.clients,
            "duration_s": options.duration,
            "replicas": options.replicas,
            "token_ttl_s": options.token_ttl,
            "refresh_fraction": round(options.refresh_fraction, 4),
            "refresh_interval_s": round(options.refresh_interval, 2),
            "cached_token_cover_after_refresh_s": round(options.cover_seconds, 2),
            "issuer_outage_s": round(options.outage_seconds, 2),
            "redis_down_s": options.redis_down,
            "request_timeout_s": options.request_timeout,
            "think_ms": options.think_ms,
            "broker_env": options.broker_env,
        },
        "requests": {
            "total": total,
            "ok": stats.outcomes.get(str(HTTP_OK), 0),
            "failed": failed,
            "by_status": statuses,
            "transport_errors": transport,
            "expired_tokens_handed_out": stats.stale,
            "per_replica": dict(sorted(stats.per_replica.items())),
            "by_source": dict(stats.sources),
            "load_seconds": round(elapsed, 2),
            "per_second": round(total / elapsed, 1),
        },
        "latency_ms": {
            "p50": round(percentile(ordered, 0.50), 2),
            "p90": round(percentile(ordered, 0.90), 2),
            "p99": round(percentile(ordered, 0.99), 2),
            "max": round(ordered[-1], 2) if ordered else 0.0,
        },
        "issuer": {
            "token_requests_total": stack.provider.proxy.token_requests - marks.get("start", 0),
            "token_requests_during_outage": marks.get("outage_end", 0)
            - marks.get("outage_start", 0),
            "expected_min_per_key": expected_min,
            "per_key": {
                key: {
                    **counts,
                    "expected_min": expected_min,
                    "distinct_tokens_handed_out": len(stats.tokens.get(key, ())),
                }
                for key, counts in sorted(per_key.items())
            },
        },
        "events": stats.events,
        "readyz": stats.readiness,
        "failure_groups": [
            {
                "outcome": what,
                "detail": detail,
                "count": int(count),
                "first_t": round(first, 3),
                "first_after_event": after_event(stats, first),
                "last_t": round(last, 3),
            }
            for (what, detail), (count, first, last) in sorted(
                stats.failure_groups.items(), key=lambda item: item[1][1]
            )
        ],
        "failures": [{**f, "after_event": after_event(stats, f["t"])} for f in stats.failures],
        "timeline": timeline,
        "broker_metrics": metrics,
        "broker_log_warnings": broker_warnings(stack),
        "logs": str(WORKDIR.relative_to(ROOT)) + "/",
    }


def prepare_keys(stack: Stack) -> list[Request]:
    """The mix (for its cache keys)."""
    assert stack.files is not None
    assert stack.provider is not None
    return prepare(stack.files, stack.provider)


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(values.items())) or "none"


def print_failures(summary: dict[str, Any]) -> None:
    """The failed requests: grouped, then the first few one by one."""
    if summary["failure_groups"]:
        print("failed requests, grouped by outcome and body")
        for group in summary["failure_groups"][:MAX_PRINTED_GROUPS]:
            print(
                f"  {group['count']:>6} x  +{group['first_t']:.2f} .. +{group['last_t']:.2f} s "
                f"(first {group['first_after_event']})  {group['outcome']}  {group['detail']}"
            )
    if summary["failures"]:
        print(f"first failed requests ({len(summary['failures'])} in {SUMMARY.name})")
        for failure in summary["failures"][:MAX_PRINTED_FAILURES]:
            print(
                f"  +{failure['t']:7.2f} s  {failure['replica']} {failure['key']}: "
                f"{failure['outcome']} after {failure['latency_ms']} ms "
                f"({failure['after_event']})  {failure['detail']}"
            )


def print_summary(summary: dict[str, Any]) -> None:
    """The human-readable form of ``summary``."""
    s, r, lat, iss = (
        summary["settings"],
        summary["requests"],
        summary["latency_ms"],
        summary["issuer"],
    )
    print(
        f"\n== soak summary: {s['duration_s']:g} s, {s['clients']} clients, "
        f"{s['replicas']} replicas, token TTL {s['token_ttl_s']} s "
        f"(refresh every {s['refresh_interval_s']:g} s) =="
    )
    print(f"started         {summary['started_utc']} (broker log times are UTC)")
    print("broker env      " + " ".join(f"{k}={v}" for k, v in s["broker_env"].items()))
    print(f"requests        {r['total']} total, {r['ok']} ok, {r['failed']} failed")
    print(f"by status       {_counts(r['by_status'])}")
    print(f"transport errs  {_counts(r['transport_errors'])}")
    print(f"expired tokens  {r['expired_tokens_handed_out']}")
    print(f"throughput      {r['per_second']} req/s over {r['load_seconds']} s")
    print(f"latency ms      p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    print(f"per replica     {_counts(r['per_replica'])}")
    print(f"token source    {_counts(r['by_source'])}")
    print(
        f"issuer          {iss['token_requests_total']} token requests "
        f"({iss['token_requests_during_outage']} during the outage, faulted); "
        f"expected minimum {iss['expected_min_per_key']} per key "
        f"(ceil({s['duration_s']:g} / {s['refresh_interval_s']:g}))"
    )
    for key, counts in iss["per_key"].items():
        print(
            f"  {key:<34} forwarded {counts['forwarded']:>3}  faulted {counts['faulted']:>3}  "
            f"min {counts['expected_min']}  distinct tokens handed out "
            f"{counts['distinct_tokens_handed_out']}"
        )
    print("events")
    for event in summary["events"]:
        detail = {k: v for k, v in event.items() if k not in {"t", "event"}}
        extra = ", ".join(f"{k}={v}" for k, v in detail.items())
        print(f"  +{event['t']:7.2f} s  {event['event']}" + (f" ({extra})" if extra else ""))
    print("readyz (changes)")
    for change in summary["readyz"]:
        print(f"  +{change['t']:7.2f} s  {change['replica']} {change['state']}")
    print("timeline        t(s)   req/s  failed  max ms  issuer requests")
    for row in summary["timeline"]:
        print(
            f"              {row['t']:>6} {row['rps']:>7} {row['failed']:>7} {row['max_ms']:>7}"
            f" {row['issuer_requests']:>7}"
        )
    print("broker warnings (log lines by message)")
    for replica, messages in summary["broker_log_warnings"].items():
        print(f"  {replica}: {_counts(messages)}")
    print("broker metrics")
    for replica, values in summary["broker_metrics"].items():
        print(f"  {replica}: " + ", ".join(f"{k}={v:g}" for k, v in values.items()))
    print_failures(summary)
    for problem in summary["problems"]:
        print(f"PROBLEM         {problem}")
    print(f"summary         {SUMMARY.relative_to(ROOT)} (logs in {summary['logs']})")
    print(f"result          {summary['result']}")


# -- main -----------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    # KeyboardInterrupt, not an own exception: asyncio's TaskGroup re-raises it unwrapped.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; the process exit status."""
    options = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True, errors="replace")
    signal.signal(signal.SIGTERM, _on_sigterm)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(name, None)
    stack = Stack(WORKDIR)
    status = EXIT_OK
    print(
        f"token-broker soak: {options.clients} clients, {options.replicas} replicas, "
        f"{options.duration:g} s, token TTL {options.token_ttl} s; all on 127.0.0.1"
    )
    try:
        start_stack(options, stack)
        print(
            f"started: redis, oidc-provider (behind the counting proxy), {options.replicas} "
            f"broker(s); logs in {WORKDIR.relative_to(ROOT)}/"
        )
        stats, marks, metrics = asyncio.run(run_load(stack, options))
        summary = summarize(stack, options, stats, marks, metrics)
        SUMMARY.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print_summary(summary)
        status = EXIT_OK if summary["result"] == "PASS" else EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; cleaning up")
        status = EXIT_INTERRUPTED
    except (SoakError, StackError, ServiceError, OSError, subprocess.SubprocessError) as exc:
        print(f"\nERROR: the soak could not run: {exc}")
        status = EXIT_SETUP
    finally:
        with signals_ignored():
            stack.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
