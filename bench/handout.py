"""Figures 1, 4 and 5: a cached hand-out against a bare endpoint, over time, and against
going to the issuer directly."""

from __future__ import annotations

import asyncio
import base64
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bench.client import Connection, post_bytes
from bench.stack import HTTP_OK, PROFILE, BenchError, Broker, Stack, handouts, rss_mb
from bench.stats import percentile, process_seconds, ratio
from bench.wrk import WrkResult, run_wrk, write_script

Say = Callable[[str], None]

# What a runner sends (`token-broker token --min-ttl 30m` inside an Airflow task).
HANDOUT_BODY = orjson.dumps(
    {
        "profile": PROFILE,
        "scopes": ["ingestion"],
        "min_ttl": 1800,
        "labels": {"dag_id": "bench", "task_id": "handout", "run_id": "manual-1"},
    }
)
TOKEN_PATH = "/v1/token"  # noqa: S105 - a path, not a secret
BARE_PATH = "/bench/bare"
HEADLINE_CONNECTIONS = 50
MAX_MEMORY_CHUNKS = 400
MAX_CHUNK_SECONDS = 5


def handout_headers(api_key: str) -> dict[str, str]:
    """The headers of a hand-out request (the same for the bare endpoint)."""
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}


def check_endpoints(broker: Broker, api_key: str) -> dict[str, Any]:
    """Both endpoints answer 200; the token one from the cache; their responses' sizes."""
    headers = handout_headers(api_key)
    sizes: dict[str, Any] = {}
    with httpx.Client(trust_env=False, timeout=30.0) as client:
        for path in (TOKEN_PATH, TOKEN_PATH, BARE_PATH):
            response = client.post(broker.url + path, content=HANDOUT_BODY, headers=headers)
            if response.status_code != HTTP_OK:
                raise BenchError(f"POST {path} answered {response.status_code}: {response.text}")
            sizes[path] = {
                "body_bytes": len(response.content),
                "header_names": sorted(response.headers.keys()),
                "source": response.headers.get("token-broker-source"),
            }
    if sizes[TOKEN_PATH]["source"] != "cache":
        raise BenchError("the second POST /v1/token was not served from the cache")
    return sizes


# -- figure 1 --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure1Options:
    """How figure 1 is measured."""

    connections: tuple[int, ...]
    seconds: float
    warmup_seconds: float
    rounds: int
    # The headline point (50 connections) gets more rounds: its verdict varies the most
    # between runs, with the machine's noise, and decides the target.
    headline_rounds: int = 4


def best(runs: list[tuple[WrkResult, float]]) -> dict[str, float]:
    """Best of the rounds, per figure: highest req/s, lowest p50, p99 and CPU per request
    (the least disturbed run of each)."""
    return {
        "rps": max(r.rps for r, _ in runs),
        "p50_ms": min(r.p50_ms for r, _ in runs),
        "p99_ms": min(r.p99_ms for r, _ in runs),
        "cpu_us": min(cpu for _, cpu in runs),
    }


def figure1(
    broker: Broker, stack: Stack, options: Figure1Options, *, suffix: str, say: Say
) -> tuple[dict[str, float], dict[str, Any]]:
    """Bare vs token at each connection count, interleaved bare, token, bare, token..."""
    api_key = stack.api_key()
    sizes = check_endpoints(broker, api_key)
    script = write_script(
        stack.workdir / "handout.lua", body=HANDOUT_BODY, headers=handout_headers(api_key)
    )
    (pid,) = broker.worker_pids()
    wrk_log = stack.workdir / f"wrk{suffix.replace('_', '-') or '-audit'}.log"
    for path in (BARE_PATH, TOKEN_PATH):  # warm both paths (and the JIT-free interpreter caches)
        run_wrk(broker.url + path, script, connections=50, seconds=options.warmup_seconds)
    figures: dict[str, float] = {}
    runs: list[dict[str, Any]] = []
    invalid: list[str] = []
    for connections in options.connections:
        per_path: dict[str, list[tuple[WrkResult, float]]] = {BARE_PATH: [], TOKEN_PATH: []}
        rounds = options.headline_rounds if connections == HEADLINE_CONNECTIONS else options.rounds
        for _ in range(max(rounds, options.rounds)):
            for path in (BARE_PATH, TOKEN_PATH):
                cpu_before = process_seconds(pid)
                result = run_wrk(
                    broker.url + path,
                    script,
                    connections=connections,
                    seconds=options.seconds,
                    log=wrk_log,
                )
                cpu = (process_seconds(pid) - cpu_before) / max(result.requests, 1) * 1e6
                per_path[path].append((result, cpu))
                runs.append({**result.as_dict(), "server_cpu_us_per_request": round(cpu, 1)})
                if result.non_2xx or result.socket_errors or not result.requests:
                    invalid.append(
                        f"{path} c={connections}: {result.non_2xx} non-2xx, "
                        f"{result.socket_errors} socket errors, {result.requests} requests"
                    )
        bare, token = best(per_path[BARE_PATH]), best(per_path[TOKEN_PATH])
        c = connections
        figures |= {
            f"bare_rps_c{c}{suffix}": bare["rps"],
            f"token_rps_c{c}{suffix}": token["rps"],
            f"rps_ratio_c{c}{suffix}": ratio(token["rps"], bare["rps"]),
            f"bare_p50_ms_c{c}{suffix}": bare["p50_ms"],
            f"token_p50_ms_c{c}{suffix}": token["p50_ms"],
            f"p50_ratio_c{c}{suffix}": ratio(token["p50_ms"], bare["p50_ms"]),
            f"bare_p99_ms_c{c}{suffix}": bare["p99_ms"],
            f"token_p99_ms_c{c}{suffix}": token["p99_ms"],
            f"p99_ratio_c{c}{suffix}": ratio(token["p99_ms"], bare["p99_ms"]),
            f"bare_cpu_us_c{c}{suffix}": round(bare["cpu_us"], 1),
            f"token_cpu_us_c{c}{suffix}": round(token["cpu_us"], 1),
            f"cpu_ratio_c{c}{suffix}": ratio(token["cpu_us"], bare["cpu_us"]),
        }
        say(
            f"c={c:<3} bare {bare['rps']:>7.0f} req/s p50 {bare['p50_ms']:.2f} ms "
            f"p99 {bare['p99_ms']:.2f} ms | token {token['rps']:>7.0f} req/s "
            f"p50 {token['p50_ms']:.2f} ms p99 {token['p99_ms']:.2f} ms | "
            f"ratio {figures[f'rps_ratio_c{c}{suffix}']:.3f}, "
            f"p99 x{figures[f'p99_ratio_c{c}{suffix}']:.2f}, server CPU/request "
            f"{bare['cpu_us']:.0f} vs {token['cpu_us']:.0f} us"
        )
    detail = {"responses": sizes, "runs": runs, "invalid": invalid}
    figures[f"response_bytes_token{suffix}"] = sizes[TOKEN_PATH]["body_bytes"]
    figures[f"response_bytes_bare{suffix}"] = sizes[BARE_PATH]["body_bytes"]
    return figures, detail


# -- figure 4 --------------------------------------------------------------------------------


def figure4(
    broker: Broker, stack: Stack, *, checkpoints: tuple[int, int], say: Say
) -> tuple[dict[str, float], dict[str, Any]]:
    """RSS of the worker after ``checkpoints`` hand-outs (wrk in short chunks, /metrics count)."""
    api_key = stack.api_key()
    check_endpoints(broker, api_key)
    script = write_script(
        stack.workdir / "memory.lua", body=HANDOUT_BODY, headers=handout_headers(api_key)
    )
    (pid,) = broker.worker_pids()
    start_rss = rss_mb(pid)
    samples: list[dict[str, float]] = [{"handouts": handouts(broker), "rss_mb": start_rss}]
    reached: dict[int, dict[str, float]] = {}
    rate = 2000.0
    for _ in range(MAX_MEMORY_CHUNKS):
        done = samples[-1]["handouts"]
        target = next((c for c in checkpoints if c not in reached), None)
        if target is None:
            break
        seconds = min(MAX_CHUNK_SECONDS, max(1, math.ceil((target - done) / rate)))
        result = run_wrk(broker.url + TOKEN_PATH, script, connections=50, seconds=seconds)
        if result.non_2xx or result.socket_errors:
            raise BenchError(f"memory load had {result.non_2xx} non-2xx answers")
        rate = max(result.rps, 100.0)
        sample = {"handouts": handouts(broker), "rss_mb": round(rss_mb(pid), 1)}
        samples.append(sample)
        for checkpoint in checkpoints:
            if checkpoint not in reached and sample["handouts"] >= checkpoint:
                reached[checkpoint] = sample
                say(f"after {sample['handouts']:.0f} hand-outs: RSS {sample['rss_mb']:.1f} MB")
    else:
        raise BenchError(f"memory load did not reach {checkpoints[-1]} hand-outs")
    low, high = (reached[c] for c in checkpoints)
    figures = {
        "rss_mb_start": round(start_rss, 1),
        f"rss_mb_{checkpoints[0] // 1000}k": low["rss_mb"],
        f"rss_mb_{checkpoints[1] // 1000}k": high["rss_mb"],
        "rss_growth_mb": round(high["rss_mb"] - low["rss_mb"], 1),
        "rss_handouts_low": low["handouts"],
        "rss_handouts_high": high["handouts"],
    }
    return figures, {"pid": pid, "samples": samples}


# -- figure 5 --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exchange:
    """One request to repeat sequentially: raw bytes for the lean client, parts for httpx."""

    host: str
    port: int
    path: str
    body: bytes
    headers: dict[str, str]


def _direct_exchange(stack: Stack) -> _Exchange:
    """A client-credentials POST (client_secret_basic) to the issuer's own port (no proxy)."""
    provider = stack.provider
    if provider is None:
        raise BenchError("no issuer")
    client = provider.client("broker-basic")
    assert client.client_secret is not None
    basic = base64.b64encode(f"{client.client_id}:{client.client_secret}".encode()).decode()
    return _Exchange(
        host="127.0.0.1",
        port=provider.upstream_port,
        path="/token",
        body=b"grant_type=client_credentials&scope=ingestion",
        headers={
            # The issuer builds its URLs from Host: call it by its public (proxy) address.
            "Host": provider.issuer.removeprefix("http://").split("/", 1)[0],
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


def _broker_exchange(broker: Broker, stack: Stack, path: str) -> _Exchange:
    return _Exchange("127.0.0.1", broker.port, path, HANDOUT_BODY,
                     handout_headers(stack.api_key()))  # fmt: skip


async def _lean_latencies(exchange: _Exchange, n: int, warmup: int) -> list[float]:
    headers = {k: v for k, v in exchange.headers.items() if k != "Host"}
    raw = post_bytes(exchange.host, exchange.port, exchange.path, exchange.body, headers)
    if "Host" in exchange.headers:
        raw = raw.replace(
            f"Host: {exchange.host}:{exchange.port}".encode(),
            f"Host: {exchange.headers['Host']}".encode(),
            1,
        )
    connection = Connection(exchange.host, exchange.port)
    latencies: list[float] = []
    try:
        for number in range(warmup + n):
            started = time.perf_counter()
            answer = await connection.send(raw)
            elapsed = (time.perf_counter() - started) * 1000
            if answer.status != HTTP_OK:
                raise BenchError(f"POST {exchange.path} answered {answer.status}")
            if number >= warmup:
                latencies.append(elapsed)
    finally:
        await connection.close()
    return latencies


def _httpx_latencies(exchange: _Exchange, n: int, warmup: int) -> list[float]:
    url = f"http://{exchange.host}:{exchange.port}{exchange.path}"
    latencies: list[float] = []
    with httpx.Client(trust_env=False, timeout=30.0) as client:
        for number in range(warmup + n):
            started = time.perf_counter()
            response = client.post(url, content=exchange.body, headers=exchange.headers)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != HTTP_OK:
                raise BenchError(f"POST {exchange.path} answered {response.status_code}")
            if number >= warmup:
                latencies.append(elapsed)
    return latencies


def figure5(
    broker: Broker, stack: Stack, *, direct_n: int, cached_n: int, say: Say
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median of sequential direct exchanges with the issuer vs sequential cached hand-outs.

    Measured twice, each time with one keep-alive connection and the same client for both
    sides: the lean asyncio client of bench/client.py (the headline: little client time
    added to either side) and httpx (what a Python runner would use; its ~1 ms per request
    is added to both sides and shrinks the ratio). The direct exchange goes to the issuer's
    own port, not through the test's counting proxy.

    The lean client also times ``/bench/bare``: no hand-out can beat it, so
    ``direct_vs_bare_speedup`` is the ceiling of the speedup against this (loopback) issuer.
    """
    direct = _direct_exchange(stack)
    cached = _broker_exchange(broker, stack, TOKEN_PATH)
    figures: dict[str, float] = {}
    bare_ms = asyncio.run(_lean_latencies(_broker_exchange(broker, stack, BARE_PATH), cached_n, 50))
    for suffix, measure in (
        ("", lambda e, n, w: asyncio.run(_lean_latencies(e, n, w))),
        ("_httpx", _httpx_latencies),
    ):
        direct_ms = measure(direct, direct_n, 5)
        cached_ms = measure(cached, cached_n, 50)
        direct_median = statistics.median(direct_ms)
        cached_median = statistics.median(cached_ms)
        figures |= {
            f"direct_median_ms{suffix}": round(direct_median, 3),
            f"direct_p99_ms{suffix}": round(percentile(direct_ms, 0.99), 3),
            f"cached_median_ms{suffix}": round(cached_median, 3),
            f"cached_p99_ms{suffix}": round(percentile(cached_ms, 0.99), 3),
            f"direct_vs_cached_speedup{suffix}": ratio(direct_median, cached_median),
        }
        say(
            f"{'httpx' if suffix else 'lean client'}: direct {direct_median:.2f} ms "
            f"(n={direct_n}), cached {cached_median:.3f} ms (n={cached_n}): "
            f"x{figures[f'direct_vs_cached_speedup{suffix}']:.1f}"
        )
    bare_median = statistics.median(bare_ms)
    figures |= {
        "bare_median_ms": round(bare_median, 3),
        "direct_vs_bare_speedup": ratio(figures["direct_median_ms"], bare_median),
    }
    say(
        f"lean client: bare endpoint {bare_median:.3f} ms: even a no-op endpoint is only "
        f"x{figures['direct_vs_bare_speedup']:.1f} faster than this issuer"
    )
    return figures, {"direct_n": direct_n, "cached_n": cached_n}
