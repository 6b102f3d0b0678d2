"""The profile option ``issuer_budget``: its forms, its default and its message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config.load import parse_config, parse_issuer_budget
from service.errors import ConfigError
from tests.unit.test_config import good_document, secret_file

__all__ = ["secret_file"]  # the fixture, used by name


@pytest.mark.parametrize(
    ("text", "per_minute"),
    [("30/min", 30), ("5 / minute", 5), ("12", 12), ("0", 0), ("off", 0), ("OFF", 0)],
)
def test_forms_read_as_exchanges_per_minute(text: str, per_minute: int) -> None:
    """Each accepted YAML spelling is the number of exchanges per minute, 0 for none."""
    value: Any = yaml.safe_load(f"v: {text}")["v"]  # as the loader sees it: off is false
    assert parse_issuer_budget(value) == per_minute


def test_default_is_thirty_a_minute(secret_file: Path) -> None:
    """A profile without the option has a budget of 30 exchanges a minute."""
    config = parse_config(good_document(), base_dir=secret_file.parent)
    assert parse_issuer_budget(config.profiles["ingestion"].spec.issuer_budget) == 30


@pytest.mark.parametrize("bad", ["30/h", "lots", -1, True, [30]])
def test_a_bad_budget_is_reported_in_the_brokers_words(secret_file: Path, bad: object) -> None:
    """Anything else is one problem naming the field and the accepted forms, not the input."""
    raw = good_document()
    raw["profiles"]["ingestion"]["issuer_budget"] = bad
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=secret_file.parent)
    [line] = [p for p in info.value.problems if "issuer_budget" in p]
    assert line.startswith("profiles.ingestion.issuer_budget: expected exchanges with the issuer")
    assert "30/min" in line
