# ruff: noqa: T201
"""``python -m bench.profile``: where a cached hand-out's CPU goes, layer by layer.

Starts Redis, the issuer (1-hour tokens) and one broker (bench endpoints on, audit lines on
unless ``--log-level WARNING``), then for ``/bench/bare`` and ``/v1/token`` in turn:

1. a wrk run at ``--connections`` without the profiler: the broker's CPU time per request
   (from /proc, all threads);
2. a second wrk run with ``py-spy record --gil --nonblocking`` attached: stacks sampled
   only while a thread holds the GIL, i.e. where that CPU time goes.

Each sample is charged to a layer: the innermost frame that belongs to a known layer wins
(so ``copy.copy`` called by the logging module is logging, ``uuid4`` called by the request-id
middleware is that middleware). Layer share x CPU per request = microseconds per request.
Writes bench/results/profile-{bare,token}.txt (collapsed stacks: open them in speedscope or
flamegraph.pl) and bench/results/profile.md, and prints the table. Needs ``py-spy`` in the
venv (``.venv/bin/pip install py-spy``) and ptrace rights over the broker (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.handout import BARE_PATH, HANDOUT_BODY, TOKEN_PATH, check_endpoints, handout_headers
from bench.stack import BenchError, Broker, Stack
from bench.stats import process_seconds
from bench.wrk import run_wrk, write_script, wrk_binary
from tests.support.processes import ServiceError, ensure_node_modules

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORKDIR = RESULTS / "profile-work"
PY_SPY_EXTRA_SECONDS = 30

# (layer, frame patterns on "function (file)"): checked innermost frame first, first match wins.
_LAYER_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging thread (JSON format, scrub, write)", (r"QueueListener\._monitor",)),
    (
        "hashing (API key, cache key, fingerprint)",
        (r"key_hash ", r"key_for ", r"prefix_for ", r"fingerprint "),
    ),
    (
        "audit line (observe/audit.py, its logs.py helpers, sink.py)",
        (r"\(service/observe/(audit|logs|sink)\.py",),
    ),
    ("logging (LogRecord, handlers)", (r"\(logging/",)),
    ("metrics (prometheus_client)", (r"\(prometheus_client/",)),
    (
        "body parsing + pydantic validation",
        (r"\(pydantic", r"model_validate_json", r"Request\.body ", r"Request\.stream "),
    ),
    (
        "authentication (callers/)",
        (r"\(service/callers/", r"bearer_caller ", r"_bearer_credential "),
    ),
    (
        "rate limit / throttle",
        (r"\(service/store/ratelimit\.py", r"\(service/store/budget\.py"),
    ),
    ("policy", (r"\(service/core/policy\.py",)),
    ("broker.issue + cache lookup", (r"\(service/core/broker\.py", r"\(service/store/")),
    ("dependency injection (fastapi)", (r"\(fastapi/dependencies/", r"\(fastapi/_compat")),
    (
        "response building (orjson, Response)",
        (r"\(starlette/responses\.py", r"json_response \(service", r"bare \(service/api/bench"),
    ),
    (
        "endpoint code (api/token.py, oauth2.py, deps.py, bench.py; core/handout.py)",
        (
            r"\(service/api/(token|oauth2|deps|bench)\.py",
            r"\(service/core/handout\.py",
        ),
    ),
    (
        "our middleware (request id, header limits, body limit)",
        (r"\(service/api/middleware/(request_id|header_limits|body_limits)\.py",),
    ),
    (
        "routing + request handler (fastapi, starlette)",
        (r"\(fastapi/routing\.py", r"\(starlette/routing\.py", r"\(starlette/requests\.py"),
    ),
    (
        "other middleware (starlette, fastapi, uvicorn proxy headers)",
        (
            r"\(starlette/middleware",
            r"\(starlette/_exception_handler",
            r"\(starlette/applications",
            r"\(fastapi/telemetry",
            r"\(fastapi/_body_limit",
            r"\(fastapi/middleware",
            r"\(fastapi/applications",
            r"\(uvicorn/middleware",
        ),
    ),
    ("HTTP server (uvicorn httptools protocol)", (r"\(uvicorn/protocols/",)),
)
LAYERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile("|".join(patterns))) for name, patterns in _LAYER_PATTERNS
)
OTHER = "event loop and other"


def classify(stack: str) -> str:
    """The layer a collapsed stack (``root;...;leaf``) is charged to."""
    frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
    if any(LAYERS[0][1].search(frame) for frame in frames):
        return LAYERS[0][0]
    for frame in reversed(frames):
        for name, pattern in LAYERS[1:]:
            if pattern.search(frame):
                return name
    return OTHER


def layers(collapsed: Path) -> Counter[str]:
    """Samples per layer in a py-spy ``--format raw`` file."""
    counts: Counter[str] = Counter()
    for line in collapsed.read_text(encoding="utf-8").splitlines():
        stack, _, number = line.rstrip().rpartition(" ")
        if stack and number.isdigit():
            counts[classify(stack)] += int(number)
    return counts


def py_spy() -> str:
    """py-spy next to this interpreter, or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    found = str(local) if local.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def measure(
    broker: Broker, script: Path, path: str, *, connections: int, seconds: int, rate: int
) -> tuple[float, float, Counter[str]]:
    """(req/s, server CPU us per request, samples per layer) for ``path``."""
    (pid,) = broker.worker_pids()
    run_wrk(broker.url + path, script, connections=connections, seconds=2)  # warm-up
    before = process_seconds(pid)
    plain = run_wrk(broker.url + path, script, connections=connections, seconds=seconds)
    cpu_us = (process_seconds(pid) - before) / max(plain.requests, 1) * 1e6
    name = "bare" if path == BARE_PATH else "token"
    out = RESULTS / f"profile-{name}.txt"
    load = subprocess.Popen(  # noqa: S603
        [wrk_binary(), f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds + 2}s",
         "-s", str(script), broker.url + path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1)
        subprocess.run(  # noqa: S603
            [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds),
             "--rate", str(rate), "--gil", "--nonblocking", "--format", "raw", "-o", str(out)],
            check=True,
            capture_output=True,
            timeout=seconds + PY_SPY_EXTRA_SECONDS,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"py-spy failed: {exc.stderr.decode(errors='replace')[-500:]}") from None
    finally:
        load.wait(timeout=seconds + PY_SPY_EXTRA_SECONDS)
    return plain.rps, cpu_us, layers(out)


def table(results: dict[str, tuple[float, float, Counter[str]]]) -> list[str]:
    """Markdown rows: layer, share and microseconds per request for each endpoint."""
    names = [name for name, _ in LAYERS] + [OTHER]
    header = "| layer | " + " | ".join(f"{p} % | {p} µs/req" for p in results) + " |"
    lines = [header, "|---|" + "---|---|" * len(results)]
    for name in names:
        cells = []
        for _rps, cpu_us, counts in results.values():
            total = sum(counts.values()) or 1
            share = counts[name] / total
            cells.append(f"{100 * share:.1f} | {share * cpu_us:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"100 | {cpu:.1f}" for _, cpu, _ in results.values())
    lines.append(f"| **total (server CPU per request)** | {totals} |")
    lines.append("| req/s (unprofiled run) | " + " | ".join(
        f"{rps:.0f} | " for rps, _, _ in results.values()) + " |")  # fmt: skip
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Profile both endpoints; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--log-level", default="INFO", choices=["INFO", "WARNING"])
    args = parser.parse_args(argv)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    WORKDIR.chmod(0o700)
    stack = Stack(WORKDIR)
    try:
        ensure_node_modules()
        stack.start_redis()
        stack.start_issuer(3600)
        broker = stack.start_broker("profile", {"TOKEN_BROKER_LOG_LEVEL": args.log_level})
        check_endpoints(broker, stack.api_key())
        script = write_script(
            WORKDIR / "handout.lua", body=HANDOUT_BODY, headers=handout_headers(stack.api_key())
        )
        results = {}
        for path in (BARE_PATH, TOKEN_PATH):
            name = "bare" if path == BARE_PATH else "token"
            print(f"profiling {path} ({args.seconds} s at {args.connections} connections)...")
            results[name] = measure(
                broker,
                script,
                path,
                connections=args.connections,
                seconds=args.seconds,
                rate=args.rate,
            )
    except (BenchError, ServiceError, OSError, subprocess.SubprocessError) as exc:
        print(f"ERROR: {exc}")
        return 2
    finally:
        stack.stop()
    title = f"audit log level {args.log_level}, {args.connections} connections"
    lines = [
        f"# Where a request's CPU goes ({title})",
        "",
        *table(results),
    ]
    (RESULTS / "profile.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
