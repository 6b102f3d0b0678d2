# ruff: noqa: T201
"""``make bench`` / ``python -m bench.run``: the five figures of the benchmark, on loopback.

1. a cached ``POST /v1/token`` against ``POST /bench/bare`` (same parsing, same response
   size, no work) with wrk at 1, 10, 50 and 200 connections, audit lines on and off;
2. issuer requests in a cold stampede over 3 brokers, and under a steady load with 20 s
   tokens;
3. hand-out latency around each background refresh against the steady-state p99;
4. worker RSS after 50k and 100k hand-outs;
5. a direct client-credentials exchange with the issuer against a cached hand-out.

Everything runs on 127.0.0.1 (redis-server, the npm oidc-provider behind the counting proxy,
``python -m service serve`` brokers with TOKEN_BROKER_BENCH_ENDPOINTS=true) and is stopped
again on every exit path. Prints progress, then one ``name=value`` line per figure; the
last line is ``cached_vs_bare_ratio=<req/s ratio at 50 connections, audit on>``. Writes
bench/results/latest.json and latest.md. Exit status: 0 when the figures were measured
(targets met or not, unless --strict), 1 with --strict when a target was missed, 2 when a
measurement was invalid or the stack could not be set up, 130 on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import handout, issuer
from bench.report import environment, evaluate, now_iso, write_results
from bench.stack import BenchError, Stack, shrink_log
from bench.stats import CpuMeter
from tests.support.processes import ServiceError, ensure_node_modules

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORKDIR = RESULTS / "work"
FIGURE1_TTL = 3600
ISSUER_TTL = 20
STAMPEDE_BROKERS = 3
STAMPEDE_SCOPES = (("ingestion",), ("read",))
STEADY_SCOPES = (("write",), ("read", "write"))
MEMORY_CHECKPOINTS = (50_000, 100_000)
FOREIGN_CPU_WARNING = 0.25
EXIT_OK, EXIT_MISSED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
BARE_VS_TOKEN, ISSUER_CALLS, REFRESH_LATENCY, MEMORY, DIRECT = 1, 2, 3, 4, 5
ALL_FIGURES = (BARE_VS_TOKEN, ISSUER_CALLS, REFRESH_LATENCY, MEMORY, DIRECT)
MAX_CONNECTIONS = 1000


@dataclass(frozen=True)
class Options:
    """Command-line options, after --quick has scaled the durations."""

    mode: str
    figures: tuple[int, ...]
    connections: tuple[int, ...]
    seconds: float
    warmup_seconds: float
    rounds: int
    headline_rounds: int
    stampede_callers: int
    steady_seconds: float
    steady_rate: float
    direct_n: int
    cached_n: int
    strict: bool


def _bounded(kind: Callable[[str], float], high: float) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"must be > 0 and <= {high:g}")
        return value

    return parse


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of integers") from None
    if not values or any(not 0 < v <= MAX_CONNECTIONS for v in values):
        raise argparse.ArgumentTypeError(f"integers from 1 to {MAX_CONNECTIONS}, comma-separated")
    return values


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Options from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    parser.add_argument("--figures", type=_ints, default=ALL_FIGURES, help="e.g. 1,4")
    parser.add_argument("--connections", type=_ints, default=(1, 10, 50, 200))
    parser.add_argument("--seconds", type=_bounded(float, 120), help="per wrk point (8; quick 3)")
    parser.add_argument(
        "--rounds",
        type=_bounded(int, 10),
        help="bare/token pairs per point (2; 4 at 50 connections)",
    )
    parser.add_argument(
        "--stampede-callers",
        type=_bounded(int, 2000),
        default=300,
        help="per broker (3 brokers; 300)",
    )
    parser.add_argument(
        "--steady-seconds", type=_bounded(float, 3600), help="steady load (120; quick 30)"
    )
    parser.add_argument(
        "--steady-rate", type=_bounded(float, 1000), default=50.0, help="req/s (50)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    steady_seconds = args.steady_seconds or (30.0 if quick else 120.0)
    if steady_seconds < ISSUER_TTL * 2 / 3:
        parser.error("--steady-seconds must cover at least one refresh interval (13.3 s)")
    return Options(
        mode="quick" if quick else "full",
        figures=tuple(sorted(set(args.figures) & set(ALL_FIGURES))),
        connections=args.connections,
        seconds=args.seconds or (3.0 if quick else 8.0),
        warmup_seconds=1.0 if quick else 2.0,
        rounds=args.rounds or 2,
        headline_rounds=args.rounds or (2 if quick else 4),
        stampede_callers=args.stampede_callers,
        steady_seconds=steady_seconds,
        steady_rate=args.steady_rate,
        direct_n=50 if quick else 200,
        cached_n=500 if quick else 2000,
        strict=bool(args.strict),
    )


class Bench:
    """The figures measured so far, and where each phase's load came from."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.figures: dict[str, float] = {}
        self.details: dict[str, Any] = {}
        self.cpu: dict[str, dict[str, float]] = {}
        self.errors: list[str] = []

    def phase(self, title: str) -> None:
        """Print a phase header."""
        print(f"\n== {title}", flush=True)

    def say(self, text: str) -> None:
        """Print one progress line."""
        print(f"   {text}", flush=True)

    def error(self, text: str) -> None:
        """Record (and print) why a measurement is invalid; the run goes on."""
        self.errors.append(text)
        print(f"   ERROR: {text}", flush=True)

    @contextlib.contextmanager
    def attempt(self, name: str) -> Iterator[None]:
        """Run one figure; a failure is recorded and the next figure still runs."""
        try:
            yield
        except (BenchError, ServiceError) as exc:
            self.error(f"{name}: {exc}")

    def measured(self, name: str, meter: CpuMeter, result: tuple[dict[str, float], Any]) -> None:
        """Keep a figure group, its details and the phase's CPU reading."""
        figures, detail = result
        self.figures.update(figures)
        self.details[name] = detail
        for problem in detail.get("invalid", []) if isinstance(detail, dict) else []:
            self.error(f"{name}: {problem}")
        self.cpu[name] = reading = meter.read()
        if reading["foreign_cores"] > FOREIGN_CPU_WARNING:
            self.say(
                f"warning: other processes used {reading['foreign_cores']} cores during this "
                "phase; its absolute figures are not comparable"
            )


def handout_phase(bench: Bench, stack: Stack) -> None:
    """Figures 5, 1 and 4 on 1-hour tokens (never refreshed during the phase)."""
    opts = bench.options
    stack.start_redis()
    stack.start_issuer(FIGURE1_TTL)
    if DIRECT in opts.figures or BARE_VS_TOKEN in opts.figures:
        broker = stack.start_broker("audit")
        try:
            if DIRECT in opts.figures:
                bench.phase("5. direct exchange with the issuer vs a cached hand-out")
                with bench.attempt("figure5"):
                    meter = CpuMeter()
                    result = handout.figure5(
                        broker, stack, direct_n=opts.direct_n, cached_n=opts.cached_n, say=bench.say
                    )
                    bench.measured("figure5", meter, result)
            if BARE_VS_TOKEN in opts.figures:
                figure1(bench, stack, broker, suffix="", title="production shape")
        finally:
            stack.stop_broker(broker)
            shrink_log(broker.log)
    if BARE_VS_TOKEN in opts.figures:
        # Comparison rows: what the rate limit and the audit lines each cost.
        broker = stack.start_broker("noratelimit", {"TOKEN_BROKER_RATE_LIMIT_PER_MINUTE": "0"})
        try:
            figure1(bench, stack, broker, suffix="_noratelimit", title="rate limit off")
        finally:
            stack.stop_broker(broker)
            shrink_log(broker.log)
        broker = stack.start_broker("noaudit", {"TOKEN_BROKER_LOG_LEVEL": "WARNING"})
        try:
            figure1(bench, stack, broker, suffix="_noaudit", title="audit lines off (WARNING)")
        finally:
            stack.stop_broker(broker)
    if MEMORY in opts.figures:
        bench.phase("4. worker RSS after 50k and 100k hand-outs (fresh broker, audit on)")
        broker = stack.start_broker("memory")
        try:
            with bench.attempt("figure4"):
                meter = CpuMeter()
                result = handout.figure4(
                    broker, stack, checkpoints=MEMORY_CHECKPOINTS, say=bench.say
                )
                bench.measured("figure4", meter, result)
        finally:
            stack.stop_broker(broker)
            shrink_log(broker.log)


def figure1(bench: Bench, stack: Stack, broker: Any, *, suffix: str, title: str) -> None:
    """One figure-1 series on ``broker``."""
    opts = bench.options
    bench.phase(
        f"1. cached hand-out vs bare endpoint, {title}: {opts.rounds} x (bare, token) "
        f"x {opts.seconds:.0f} s per connection count ({max(opts.rounds, opts.headline_rounds)} "
        f"x at {handout.HEADLINE_CONNECTIONS})"
    )
    options = handout.Figure1Options(
        connections=opts.connections,
        seconds=opts.seconds,
        warmup_seconds=opts.warmup_seconds,
        rounds=opts.rounds,
        headline_rounds=opts.headline_rounds,
    )
    name = f"figure1{suffix or '_audit'}"
    with bench.attempt(name):
        meter = CpuMeter()
        result = handout.figure1(broker, stack, options, suffix=suffix, say=bench.say)
        bench.measured(name, meter, result)


def issuer_phase(bench: Bench, stack: Stack) -> None:
    """Figures 2 and 3 on 20 s tokens, 3 brokers on one Redis."""
    opts = bench.options
    stack.start_redis()
    provider = stack.start_issuer(ISSUER_TTL)
    brokers = [stack.start_broker(f"issuer-{i}") for i in range(STAMPEDE_BROKERS)]
    try:
        api_key = stack.api_key()
        if ISSUER_CALLS in opts.figures:
            bench.phase(
                f"2. cold stampede: {STAMPEDE_BROKERS} brokers x {opts.stampede_callers} callers, "
                f"{len(STAMPEDE_SCOPES)} scope sets"
            )
            with bench.attempt("figure2_stampede"):
                meter = CpuMeter()
                stampede = issuer.stampede(
                    brokers,
                    provider.proxy,
                    api_key,
                    scope_sets=STAMPEDE_SCOPES,
                    callers_per_broker=opts.stampede_callers,
                    say=bench.say,
                )
                bench.measured("figure2_stampede", meter, asyncio.run(stampede))
        bench.phase(
            f"2-3. steady load: {opts.steady_rate:.0f} req/s for {opts.steady_seconds:.0f} s over "
            f"{STAMPEDE_BROKERS} brokers, {len(STEADY_SCOPES)} keys, {ISSUER_TTL} s tokens"
        )
        with bench.attempt("figure2_steady_figure3"):
            meter = CpuMeter()
            steady = issuer.steady(
                brokers,
                provider.proxy,
                api_key,
                scope_sets=STEADY_SCOPES,
                seconds=opts.steady_seconds,
                rate=opts.steady_rate,
                lifetime=ISSUER_TTL,
                say=bench.say,
            )
            bench.measured("figure2_steady_figure3", meter, asyncio.run(steady))
    finally:
        for broker in brokers:
            stack.stop_broker(broker)
            shrink_log(broker.log)


def summary_lines(figures: dict[str, float], targets: list[dict[str, Any]]) -> list[str]:
    """``name=value`` per figure, the target count, and the headline ratio last."""
    lines = [f"{name}={value:g}" for name, value in figures.items()]
    counted = [t for t in targets if t["counted"] and t["met"] is not None]
    lines.append(f"targets_met={sum(1 for t in counted if t['met'])}/{len(counted)}")
    headline = figures.get("rps_ratio_c50")
    lines.append(f"cached_vs_bare_ratio={'n/a' if headline is None else f'{headline:g}'}")
    return lines


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the exit status."""
    options = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True, errors="replace")
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    started_at = now_iso()
    bench = Bench(options)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    WORKDIR.chmod(0o700)
    stack = Stack(WORKDIR)
    status = EXIT_OK
    env: dict[str, Any] = {}
    try:
        env = environment()
        print(
            f"token-broker bench ({options.mode}): figures {options.figures}, "
            f"{env['cpus']} CPUs, load average {' '.join(env['loadavg_at_start'])}, {env['wrk']}"
        )
        ensure_node_modules()
        if {BARE_VS_TOKEN, MEMORY, DIRECT} & set(options.figures):
            handout_phase(bench, stack)
        if {ISSUER_CALLS, REFRESH_LATENCY} & set(options.figures):
            issuer_phase(bench, stack)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything")
        status = EXIT_INTERRUPTED
    except (BenchError, ServiceError, OSError) as exc:
        print(f"\nERROR: {exc}")
        bench.errors.append(str(exc))
        status = EXIT_INVALID
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    targets = evaluate(bench.figures)
    if status == EXIT_OK and bench.errors:
        status = EXIT_INVALID
    if (
        status == EXIT_OK
        and options.strict
        and any(t["met"] is False for t in targets if t["counted"])
    ):
        status = EXIT_MISSED
    result = {
        "started": started_at,
        "finished": now_iso(),
        "duration_s": round(time.monotonic() - started, 1),
        "mode": options.mode,
        "options": asdict(options),
        "status": status,
        "figures": bench.figures,
        "targets": targets,
        "cpu": bench.cpu,
        "details": bench.details,
        "errors": bench.errors,
        "environment": env,
    }
    write_results(RESULTS / "latest.json", RESULTS / "latest.md", result)
    print(f"\nresults: {RESULTS.relative_to(ROOT)}/latest.json, latest.md; logs in "
          f"{WORKDIR.relative_to(ROOT)}/")  # fmt: skip
    print()
    for line in summary_lines(bench.figures, targets):
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
