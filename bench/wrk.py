"""Drive ``wrk`` (Debian package) with a POST script and read its figures back as JSON.

The Lua script sets the method, the JSON body and the headers, and its ``done`` hook prints
one ``BENCH_JSON {...}`` line from wrk's own summary and latency histogram (the same
distribution ``--latency`` prints, with exact percentiles instead of rounded text).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.stack import BenchError

MARK = "BENCH_JSON "
EXTRA_SECONDS = 30.0  # wrk's own start-up and shutdown, on top of the duration
# wrk drops a response slower than --timeout from the latency histogram and counts it as a
# "timeout" error; at 200 connections a few connections are starved for seconds, so the
# timeout is set beyond any run's length: every answer lands in the histogram.
TIMEOUT_SECONDS = 60

_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms) and error counts."""

    path: str
    connections: int
    threads: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    non_2xx: int
    socket_errors: int
    bytes_per_response: float

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-ready."""
        return asdict(self)


def wrk_binary() -> str:
    """The ``wrk`` on PATH, or BenchError (``make bench`` installs it with apt)."""
    path = shutil.which("wrk")
    if path is None:
        raise BenchError("wrk is not on PATH: apt-get install wrk (make bench does)")
    return path


def wrk_version() -> str:
    """``wrk -v``'s first line (wrk exits 1 after printing it)."""
    result = subprocess.run(  # noqa: S603
        [wrk_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    return (result.stdout or result.stderr).splitlines()[0].strip()


def write_script(path: Path, *, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk Lua script POSTing ``body`` with ``headers`` (mode 0600: it holds an API key)."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n" + _DONE, encoding="utf-8")
    path.chmod(0o600)
    return path


def _lua_string(text: str) -> str:
    # JSON escaping is valid Lua escaping for the ASCII this module writes.
    return json.dumps(text)


def run_wrk(
    url: str, script: Path, *, connections: int, seconds: float, log: Path | None = None
) -> WrkResult:
    """One wrk run of ``seconds`` at ``connections`` (threads = min(2, connections))."""
    threads = min(2, connections)
    seconds = max(1, round(seconds))
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout", f"{TIMEOUT_SECONDS}s",
        "--latency",
        "-s", str(script),
        url,
    ]  # fmt: skip
    try:
        result = subprocess.run(  # noqa: S603
            command,
            capture_output=True,
            text=True,
            timeout=seconds + EXTRA_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + EXTRA_SECONDS:.0f} s") from exc
    if log is not None:
        with log.open("a", encoding="utf-8") as sink:
            sink.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith(MARK)), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    raw: dict[str, float] = json.loads(line.removeprefix(MARK))
    requests = int(raw["requests"])
    duration = raw["duration_us"] / 1e6

    def ms(name: str) -> float:
        return round(float(raw[name]) / 1000, 3)

    return WrkResult(
        path=url.split("/", 3)[-1],
        connections=connections,
        threads=threads,
        seconds=round(duration, 3),
        requests=requests,
        rps=round(requests / duration, 1) if duration > 0 else 0.0,
        p50_ms=ms("p50_us"),
        p90_ms=ms("p90_us"),
        p99_ms=ms("p99_us"),
        p999_ms=ms("p999_us"),
        max_ms=ms("max_us"),
        mean_ms=round(raw["mean_us"] / 1000, 3),
        non_2xx=int(raw["status"]),
        socket_errors=int(raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]),
        bytes_per_response=round(raw["bytes"] / requests, 1) if requests else 0.0,
    )
