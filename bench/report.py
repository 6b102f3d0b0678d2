"""Targets, the environment, and the two result files (JSON and a Markdown table)."""

from __future__ import annotations

import contextlib
import json
import operator
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.wrk import wrk_version
from tests.support.processes import IDP_DIR

ROOT = Path(__file__).resolve().parents[1]
FLAT_MB = 2.0  # "flat": RSS grows by at most this between the two memory checkpoints

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Target:
    """``figure <op> limit`` where ``limit`` is a number or another figure's name."""

    number: int
    figure: str
    op: str
    limit: float | str
    what: str
    counted: bool = True  # False: shown for comparison, not a target of the issue

    def bound(self, figures: Mapping[str, float]) -> float | None:
        """The limit as a number (None when it names a figure that was not measured)."""
        if isinstance(self.limit, str):
            return figures.get(self.limit)
        return self.limit

    def verdict(self, figures: Mapping[str, float]) -> bool | None:
        """Met, not met, or None when not measured."""
        value, bound = figures.get(self.figure), self.bound(figures)
        if value is None or bound is None:
            return None
        return _OPS[self.op](value, bound)


TARGETS = (
    Target(1, "rps_ratio_c50", ">=", 0.85, "hand-out req/s vs bare, 50 conns, production shape"),
    Target(1, "p99_ratio_c50", "<=", 1.5, "hand-out p99 vs bare, 50 conns, production shape"),
    Target(1, "cpu_ratio_c50", "<=", 1.25, "server CPU/request vs bare, 50 conns, production"),
    Target(1, "rps_ratio_c50_noratelimit", ">=", 0.85, "same, rate limit off", counted=False),
    Target(1, "p99_ratio_c50_noratelimit", "<=", 1.5, "same, rate limit off", counted=False),
    Target(1, "cpu_ratio_c50_noratelimit", "<=", 1.25, "same, rate limit off", counted=False),
    Target(
        1, "rps_ratio_c50_noaudit", ">=", 0.85, "same, audit lines off (WARNING)", counted=False
    ),
    Target(1, "p99_ratio_c50_noaudit", "<=", 1.5, "same, audit lines off (WARNING)", counted=False),
    Target(
        1, "cpu_ratio_c50_noaudit", "<=", 1.25, "same, audit lines off (WARNING)", counted=False
    ),
    Target(2, "stampede_issuer_requests", "==", "stampede_expected", "cold stampede: 1 per key"),
    Target(2, "steady_issuer_requests", "==", "steady_expected", "steady: ceil(T/interval)/key"),
    Target(3, "refresh_p99_ratio", "<=", 1.2, "p99 in refresh windows vs steady p99"),
    Target(3, "refresh_max_ratio", "<=", 1.2, "max in refresh windows vs steady p99"),
    Target(3, "refresh_waited_on_issuer", "==", 0.0, "warm requests that waited on the issuer"),
    Target(4, "rss_mb_100k", "<=", 120.0, "worker RSS after 100k hand-outs (MB)"),
    Target(4, "rss_growth_mb", "<=", FLAT_MB, "RSS growth 50k -> 100k hand-outs (MB)"),
    Target(5, "direct_vs_cached_speedup", ">=", 10.0, "direct exchange median / cached median"),
    Target(
        5, "direct_vs_bare_speedup", ">=", 10.0, "ceiling: direct / bare endpoint", counted=False
    ),
)


def evaluate(figures: Mapping[str, float]) -> list[dict[str, Any]]:
    """Every target with its value and verdict."""
    rows = []
    for target in TARGETS:
        verdict = target.verdict(figures)
        rows.append(
            {
                "figure_no": target.number,
                "figure": target.figure,
                "what": target.what,
                "value": figures.get(target.figure),
                "target": f"{target.op} {_fmt(target.bound(figures), target.limit)}",
                "met": verdict,
                "counted": target.counted,
            }
        )
    return rows


def _fmt(bound: float | None, limit: float | str) -> str:
    if isinstance(limit, str):
        return f"{limit} ({bound})" if bound is not None else limit
    return f"{limit:g}"


def _run(command: list[str]) -> str:
    try:
        result = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, timeout=10, check=False, cwd=ROOT
        )
    except (OSError, subprocess.SubprocessError):
        return "unavailable"
    return (
        (result.stdout or result.stderr).strip().splitlines()[0]
        if result.stdout or result.stderr
        else ""
    )


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "orjson",
                 "redis", "hiredis", "prometheus-client", "authlib"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    oidc = "unknown"
    with contextlib.suppress(OSError, ValueError):
        manifest = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
        oidc = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_at_start": Path("/proc/loadavg").read_text(encoding="ascii").split()[:3],
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": packages,
        "wrk": wrk_version(),
        "redis_server": _run(["redis-server", "--version"]),
        "node": _run(["node", "--version"]),
        "oidc_provider": oidc,
        "git_commit": _run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(dirty),
    }


def write_results(path_json: Path, path_md: Path, result: dict[str, Any]) -> None:
    """``latest.json`` and ``latest.md``."""
    path_json.parent.mkdir(parents=True, exist_ok=True)
    path_json.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    path_md.write_text(markdown(result), encoding="utf-8")


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def markdown(result: dict[str, Any]) -> str:
    """The Markdown summary: targets first, then figure 1 per connection count."""
    figures: dict[str, float] = result["figures"]
    env = result["environment"]
    lines = [
        "# token-broker benchmark",
        "",
        (
            f"{result['finished']} · mode `{result['mode']}` · commit `{env.get('git_commit')}`"
            f"{' (dirty)' if env.get('git_dirty') else ''} · {env.get('cpus')} CPUs "
            f"({env.get('cpu')}) · Python {env.get('python')} · {env.get('wrk')}"
        ),
        "",
        "| # | figure | value | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in result["targets"]:
        note = "" if row["counted"] else " (comparison)"
        value = "—" if row["value"] is None else f"{row['value']:g}"
        lines.append(
            f"| {row['figure_no']} | `{row['figure']}` {row['what']} | {value} | "
            f"{row['target']} | {_verdict(row['met'])}{note} |"
        )
    levels = sorted(
        {int(k.removeprefix("bare_rps_c")) for k in figures if k.startswith("bare_rps_c") and
         k.removeprefix("bare_rps_c").isdigit()}
    )  # fmt: skip
    if levels:
        lines += [
            "",
            "## 1. Cached hand-out vs bare endpoint (best of the rounds)",
            "",
            (
                "| shape | conns | bare req/s | token req/s | ratio | bare p50 | token p50 | "
                "bare p99 | token p99 | p99 ratio | server CPU/req bare | token | ratio |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for suffix, label in (
            ("", "production"),
            ("_noratelimit", "rate limit off"),
            ("_noaudit", "audit off"),
        ):
            for c in levels:
                key = f"c{c}{suffix}"
                if f"bare_rps_{key}" not in figures:
                    continue
                lines.append(
                    f"| {label} | {c} | {figures[f'bare_rps_{key}']:.0f} | "
                    f"{figures[f'token_rps_{key}']:.0f} | {figures[f'rps_ratio_{key}']:.3f} | "
                    f"{figures[f'bare_p50_ms_{key}']:.2f} ms | "
                    f"{figures[f'token_p50_ms_{key}']:.2f} ms | "
                    f"{figures[f'bare_p99_ms_{key}']:.2f} ms | "
                    f"{figures[f'token_p99_ms_{key}']:.2f} ms | "
                    f"{figures[f'p99_ratio_{key}']:.3f} | "
                    f"{figures[f'bare_cpu_us_{key}']:.0f} µs | "
                    f"{figures[f'token_cpu_us_{key}']:.0f} µs | {figures[f'cpu_ratio_{key}']:.3f} |"
                )
    lines += ["", "## All figures", "", "| name | value |", "|---|---|"]
    lines += [f"| `{name}` | {value:g} |" for name, value in figures.items()]
    cpu = result.get("cpu", {})
    if cpu:
        lines += [
            "",
            "## Other load on the machine during each phase",
            "",
            "| phase | seconds | machine cores busy | foreign cores | steal cores |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {phase} | {v['seconds']} | {v['machine_cores']} | {v['foreign_cores']} | "
            f"{v['steal_cores']} |"
            for phase, v in cpu.items()
        ]
    if result.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")
