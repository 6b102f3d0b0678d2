"""Figures 2 and 3: how often the brokers call the issuer, and what a refresh costs callers.

Issuer token requests are counted (and timed, by polling every 20 ms) at the counting proxy
in front of the issuer, grouped by the ``scope`` the broker sent: one group per cache key
(one profile here).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bench.client import Connection, HttpError, get_bytes, post_bytes
from bench.stack import HTTP_OK, PROFILE, BenchError, Broker
from bench.stats import percentile, ratio
from service.config.settings import Settings
from tests.support.proxy import CountingProxy

Say = Callable[[str], None]
HOST = "127.0.0.1"
POLL_SECONDS = 0.02
SETTLE_SECONDS = 1.0
WINDOW_SECONDS = 1.0
WORKERS_PER_BROKER = 4
MAX_OPEN_AT_ONCE = 100


def scope_label(scope: str) -> str:
    """A scope parameter as a stable label (sorted, ``+``-joined)."""
    return "+".join(sorted(scope.split())) or "(none)"


def _request(port: int, api_key: str, scopes: Sequence[str]) -> bytes:
    body = orjson.dumps({"profile": PROFILE, "scopes": list(scopes), "labels": {"dag_id": "b"}})
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    return post_bytes(HOST, port, "/v1/token", body, headers)


async def _open_all(connections: Sequence[Connection]) -> None:
    """Connect every connection and send one GET /healthz on it (no cache involved)."""
    gate = asyncio.Semaphore(MAX_OPEN_AT_ONCE)

    async def warm(connection: Connection) -> None:
        async with gate:
            answer = await connection.send(get_bytes(HOST, connection.port, "/healthz"))
            if answer.status != HTTP_OK:
                raise BenchError(f"GET /healthz answered {answer.status}")

    await asyncio.gather(*(warm(c) for c in connections))


async def _close_all(connections: Sequence[Connection]) -> None:
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


def _issuer_groups(proxy: CountingProxy, since: int) -> Counter[str]:
    return Counter(scope_label(r.form.get("scope", "")) for r in proxy.token_request_log[since:])


# -- figure 2: cold stampede -----------------------------------------------------------------


async def stampede(
    brokers: Sequence[Broker],
    proxy: CountingProxy,
    api_key: str,
    *,
    scope_sets: Sequence[Sequence[str]],
    callers_per_broker: int,
    say: Say,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Every caller connected and waiting, then all released at once on a cold cache."""
    plan = [
        (Connection(HOST, broker.port), _request(broker.port, api_key, scope_sets[i % 2]))
        for broker in brokers
        for i in range(callers_per_broker)
    ]
    connections = [c for c, _ in plan]
    try:
        await _open_all(connections)
        go = asyncio.Event()

        async def caller(connection: Connection, request: bytes) -> tuple[int, str, float]:
            await go.wait()
            started = time.perf_counter()
            try:
                answer = await connection.send(request)
            except HttpError:
                return 0, "", (time.perf_counter() - started) * 1000
            return answer.status, answer.source, (time.perf_counter() - started) * 1000

        tasks = [asyncio.create_task(caller(c, r)) for c, r in plan]
        await asyncio.sleep(0.2)  # every caller is parked on the event
        before = len(proxy.token_request_log)
        go.set()
        results = await asyncio.gather(*tasks)
        await asyncio.sleep(SETTLE_SECONDS)  # a late, duplicate exchange would show up here
        groups = _issuer_groups(proxy, before)
    finally:
        await _close_all(connections)
    statuses = Counter(status for status, _, _ in results)
    sources = Counter(source for _, source, _ in results)
    latencies = [ms for _, _, ms in results]
    figures = {
        "stampede_callers": len(plan),
        "stampede_ok": statuses[HTTP_OK],
        "stampede_issuer_requests": sum(groups.values()),
        "stampede_expected": len(scope_sets),
        "stampede_p50_ms": round(percentile(latencies, 0.5), 1),
        "stampede_max_ms": round(max(latencies), 1),
    }
    say(
        f"{len(plan)} callers on {len(brokers)} brokers, {len(scope_sets)} scope sets: "
        f"{statuses[HTTP_OK]} x 200, issuer requests {dict(groups)}, sources {dict(sources)}"
    )
    detail = {
        "issuer_requests_by_scope": dict(groups),
        "statuses": {str(k): v for k, v in statuses.items()},
        "sources": dict(sources),
    }
    if statuses[HTTP_OK] != len(plan):
        raise BenchError(f"stampede: not every caller got a token: {dict(statuses)}")
    return figures, detail


# -- figure 2 (steady) and 3 ----------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """Issuer requests one cache key needs over a load of ``duration`` seconds.

    The broker refreshes a token in the background at ``fraction`` of its life (the first
    request after that point starts the refresh), and stops serving it ``skew`` seconds
    before expiry (``skew = min(max_skew, lifetime / 10)``, service/core/broker.py). With the
    refresh point before ``lifetime - skew`` no caller ever finds the cache empty, so a load
    that starts cold needs the cold fetch plus one refresh per interval: ``ceil(duration /
    interval)`` exchanges per key, and no more.
    """

    lifetime: float
    fraction: float
    skew: float
    duration: float

    @classmethod
    def for_settings(cls, lifetime: float, duration: float) -> Expectation:
        """From the broker's defaults (the bench changes neither)."""
        defaults = Settings.model_fields
        fraction = float(defaults["refresh_fraction"].default)
        max_skew = float(defaults["max_skew_seconds"].default)
        return cls(lifetime, fraction, min(max_skew, lifetime / 10), duration)

    @property
    def interval(self) -> float:
        """Seconds between refreshes of one key."""
        return self.lifetime * self.fraction

    @property
    def per_key(self) -> int:
        """Expected exchanges per key."""
        if self.interval >= self.lifetime - self.skew:
            raise BenchError("refresh point after the cache expiry: the cache would run dry")
        return math.ceil(self.duration / self.interval - 1e-9)


@dataclass
class Sample:
    """One request of the steady load (times in seconds from the load start)."""

    sent: float
    latency_ms: float
    status: int
    source: str
    late_ms: float


async def steady(
    brokers: Sequence[Broker],
    proxy: CountingProxy,
    api_key: str,
    *,
    scope_sets: Sequence[Sequence[str]],
    seconds: float,
    rate: float,
    lifetime: float,
    say: Say,
) -> tuple[dict[str, float], dict[str, Any]]:
    """A constant open-loop load over the brokers; issuer requests and latencies timed."""
    workers = WORKERS_PER_BROKER * len(brokers)
    total = int(seconds * rate)
    requests = [[_request(b.port, api_key, s) for s in scope_sets] for b in brokers]
    connections = [Connection(HOST, brokers[w % len(brokers)].port) for w in range(workers)]
    samples: list[Sample] = []
    events: list[tuple[float, str]] = []
    stop = asyncio.Event()
    before = len(proxy.token_request_log)
    try:
        await _open_all(connections)
        start = time.monotonic() + 0.1

        async def monitor() -> None:
            seen = before
            while True:
                log = proxy.token_request_log
                now = time.monotonic() - start
                events.extend((now, scope_label(r.form.get("scope", ""))) for r in log[seen:])
                seen = len(log)
                if stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await stop.wait()

        async def worker(index: int) -> None:
            connection = connections[index]
            mine = requests[index % len(brokers)]
            for number in range(index, total, workers):
                due = start + number / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.monotonic()
                try:
                    answer = await connection.send(mine[number % len(mine)])
                    status, source = answer.status, answer.source
                except HttpError:
                    status, source = 0, ""
                done = time.monotonic()
                samples.append(
                    Sample(sent - start, (done - sent) * 1000, status, source, (sent - due) * 1000)
                )

        watcher = asyncio.create_task(monitor())
        try:
            await asyncio.gather(*(worker(w) for w in range(workers)))
            await asyncio.sleep(SETTLE_SECONDS)
        finally:
            stop.set()
            await watcher
    finally:
        await _close_all(connections)
    return _steady_figures(samples, events, scope_sets, total / rate, lifetime, say)


def _steady_figures(  # noqa: PLR0917 - one private call site
    samples: list[Sample],
    events: list[tuple[float, str]],
    scope_sets: Sequence[Sequence[str]],
    duration: float,
    lifetime: float,
    say: Say,
) -> tuple[dict[str, float], dict[str, Any]]:
    expect = Expectation.for_settings(lifetime, duration)
    labels = [scope_label(" ".join(s)) for s in scope_sets]
    by_key = {label: sorted(t for t, key in events if key == label) for label in labels}
    strays = [key for _, key in events if key not in by_key]
    failed = sum(1 for s in samples if s.status != HTTP_OK)
    if any(not times for times in by_key.values()):
        raise BenchError(f"no cold fetch seen for some key: {by_key}")
    # Figure 3: the cold start is no refresh; requests until a second after it are left out.
    warm_from = max(times[0] for times in by_key.values()) + WINDOW_SECONDS
    points = sorted(t for times in by_key.values() for t in times[1:])
    window: list[float] = []
    rest: list[float] = []
    waited = 0  # answered by an exchange the request waited for, after the cold start
    for sample in samples:
        if sample.sent < warm_from:
            continue
        waited += sample.source == "issuer"
        near = any(abs(sample.sent - p) <= WINDOW_SECONDS for p in points)
        (window if near else rest).append(sample.latency_ms)
    steady_p99 = percentile(rest, 0.99)
    window_p99 = percentile(window, 0.99)
    window_max = max(window, default=0.0)
    gaps = [b - a for times in by_key.values() for a, b in itertools.pairwise(times)]
    figures = {
        "steady_seconds": round(duration, 1),
        "steady_requests": len(samples),
        "steady_failed": failed,
        "steady_keys": len(labels),
        "steady_refresh_interval_s": round(expect.interval, 3),
        "steady_refresh_interval_measured_s": round(sum(gaps) / len(gaps), 3) if gaps else 0.0,
        "steady_issuer_requests": sum(len(t) for t in by_key.values()) + len(strays),
        "steady_expected": expect.per_key * len(labels),
        "steady_late_sends_p99_ms": round(percentile([s.late_ms for s in samples], 0.99), 2),
        "refresh_windows": len(points),
        "refresh_window_requests": len(window),
        "steady_p50_ms": round(percentile(rest, 0.5), 3),
        "steady_p99_ms": round(steady_p99, 3),
        "steady_max_ms": round(max(rest, default=0.0), 3),
        "refresh_p99_ms": round(window_p99, 3),
        "refresh_max_ms": round(window_max, 3),
        "refresh_p99_ratio": ratio(window_p99, steady_p99),
        "refresh_max_ratio": ratio(window_max, steady_p99),
        "refresh_waited_on_issuer": waited,
    }
    say(
        f"{len(samples)} requests over {duration:.0f} s ({failed} failed); issuer requests "
        f"{ {k: len(v) for k, v in by_key.items()} } vs {expect.per_key} per key expected "
        f"(refresh every {expect.interval:.2f} s, cache until lifetime - {expect.skew:.1f} s)"
    )
    say(
        f"refresh windows: {len(points)}, {len(window)} requests, p99 {window_p99:.2f} ms, "
        f"max {window_max:.2f} ms; steady p99 {steady_p99:.2f} ms, max {max(rest, default=0):.2f} "
        f"ms; {waited} requests after the cold start waited on the issuer"
    )
    detail = {
        "issuer_request_times_s": {k: [round(t, 3) for t in v] for k, v in by_key.items()},
        "stray_issuer_requests": strays,
        "expectation": {
            "lifetime_s": expect.lifetime,
            "refresh_fraction": expect.fraction,
            "skew_s": expect.skew,
            "per_key": expect.per_key,
        },
    }
    if failed:
        raise BenchError(f"steady load: {failed} of {len(samples)} requests did not get a 200")
    return figures, detail
