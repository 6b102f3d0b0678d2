"""Log set-up: JSON lines written in batches off the event loop, all of them by shutdown."""

from __future__ import annotations

import json
import logging

import pytest

from service.observe.logs import configure_logging, drain


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
