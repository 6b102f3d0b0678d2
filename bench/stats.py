"""Small statistics and bookkeeping shared by the figures."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` rounded to 3 places (0 when the denominator is 0)."""
    return round(numerator / denominator, 3) if denominator else 0.0


def _busy_jiffies() -> tuple[int, int]:
    """(busy, steal) jiffies of all CPUs since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq, steal


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            pending.extend(children)
    return found


def process_seconds(pid: int) -> float:
    """CPU seconds of a live process and of its waited-for children; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0
    # Fields after the parenthesised command name: utime is the 14th field, cstime the 17th.
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and all its descendants, live or waited for."""
    times = os.times()
    live = sum(process_seconds(pid) for pid in _descendants(os.getpid()))
    return times.user + times.system + times.children_user + times.children_system + live


@dataclass
class CpuMeter:
    """How much CPU the rest of the machine used while a phase ran.

    ``foreign`` is every busy CPU second on the machine minus this process and all its
    descendants (brokers, wrk, redis-server, node; live ones from /proc, exited ones once
    waited for). Another test run on the same two cores shows up here, and makes absolute
    numbers, and to a lesser degree ratios, unreliable.
    """

    started: float = field(default_factory=time.monotonic)
    busy: int = field(default_factory=lambda: _busy_jiffies()[0])
    steal: int = field(default_factory=lambda: _busy_jiffies()[1])
    own: float = field(default_factory=_own_seconds)

    def read(self) -> dict[str, float]:
        """Cores used by other processes (and stolen by the hypervisor) on average so far."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        tick = os.sysconf("SC_CLK_TCK")
        busy, steal = _busy_jiffies()
        machine = (busy - self.busy) / tick
        own = _own_seconds() - self.own
        return {
            "seconds": round(elapsed, 1),
            "machine_cores": round(machine / elapsed, 2),
            "foreign_cores": round(max(0.0, machine - own) / elapsed, 2),
            "steal_cores": round((steal - self.steal) / tick / elapsed, 2),
        }
