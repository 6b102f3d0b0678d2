"""Log set-up: JSON lines written in batches off the event loop, all of them by shutdown."""

from __future__ import annotations

import json
import logging

import pytest

from service.observe.logs import configure_logging, drain, iso_time, scrub, scrub_bytes


def test_records_reach_stderr_as_json_lines_in_order_and_drain_loses_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """500 records logged quickly all arrive, in order, one JSON object per line, scrubbed."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", json=True)
        log = logging.getLogger("token_broker.test")
        for n in range(500):
            log.info("line %d", n, extra={"n": n})
        log.info("key tbk_0a1b_secretpart-xyz must not appear")
        log.debug("below the level")
        drain()
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        drain()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert [line["n"] for line in lines[:500]] == list(range(500))
    assert lines[0]["logger"] == "token_broker.test"
    assert lines[0]["message"] == "line 0"
    assert "secretpart" not in lines[500]["message"]
    assert len(lines) == 501


SECRET_LINES = (
    "plain line with nothing to hide, not even basics or a bearer",
    "key tbk_ab12cd34_Zm9v-YmFy_baz jwt eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln",
    "header Bearer abc.def-ghi and BASIC dXNlcjpwYXNz",
    "unicode space bearer\u00a0abc.def and a label \u00e9t\u00e9 eyJa.eyJb.c",
    "tbk_ without a key, eyJ without dots, Bearer\tx",
)


@pytest.mark.parametrize("text", SECRET_LINES)
def test_scrub_bytes_masks_exactly_what_scrub_masks(text: str) -> None:
    """The audit trail's bytes scrubber redacts the same secrets as the text one."""
    assert scrub_bytes(text.encode()) == scrub(text).encode()


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_764_716_399.999, "2025-12-02T22:59:59.999Z"),
        (1_764_716_400.0, "2025-12-02T23:00:00.000Z"),
        (1_764_716_400.5, "2025-12-02T23:00:00.500Z"),
        (1_764_716_399.25, "2025-12-02T22:59:59.250Z"),
    ],
)
def test_iso_time_is_right_across_second_boundaries_in_any_order(
    seconds: float, expected: str
) -> None:
    """The per-second memo of the timestamp never serves one second's text for another."""
    assert iso_time(seconds) == expected
