"""Durations as people write them: ``90``, ``90s``, ``15m``, ``4h``, ``1d``, ``1h30m``.

In the runner because ``--min-ttl`` needs it there; the broker's configuration imports it.
"""

from __future__ import annotations

import re

__all__ = ["MAX_SECONDS", "parse_duration"]

_PART = re.compile(r"(\d+)([smhd])", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SECONDS = 366 * 86400
_MAX_TEXT = 32
_NOT_A_DURATION = "not a duration (examples: 3600, 90m, 4h, 1h30m)"


def parse_duration(value: str | int) -> int:
    """Seconds in ``value``; raises ``ValueError`` with a readable message."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 90m, 4h")  # noqa: TRY004
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip().lower()
        # ASCII only and short: int() of other Unicode digits fails with a message that
        # quotes its input, and a caller's text must never come back in an error.
        if not text.isascii() or len(text) > _MAX_TEXT:
            raise ValueError(_NOT_A_DURATION)
        if text.isdigit():
            seconds = int(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                # Never echo the value: callers paste the wrong thing, keys included.
                raise ValueError(_NOT_A_DURATION)
            seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds < 0 or seconds > MAX_SECONDS:
        raise ValueError(f"duration must be between 0 and {MAX_SECONDS} seconds")
    return seconds
