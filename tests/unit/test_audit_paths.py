"""The audit trail's two paths (sink in served brokers, logging elsewhere) write the same line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from service.observe import audit
from service.observe.logs import REQUEST_ID, JsonFormatter, RequestIdFilter
from tests.support.audit_trail import audit_trail_at

FIELDS = {
    "caller": "airflow",
    "profile": "ingestion",
    "credential": "api_key",
    "scopes": ("ingestion", "read"),
    "token": "eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln",
    "source": "cache",
    "expires_in": 3500,
    "labels": {"dag_id": "d", "note": "Bearer abc.def-ghi"},
    "client": "127.0.0.1",
}


async def test_sink_line_equals_the_logging_line_key_for_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same keys in the same order, same values (time aside), secrets scrubbed on both paths."""
    caplog.set_level(logging.INFO, logger=audit.log.name)
    reset = REQUEST_ID.set("req-1")
    try:
        await audit.record("issued", **FIELDS)  # type: ignore[arg-type]
        (record,) = [r for r in caplog.records if r.name == audit.log.name]
        RequestIdFilter().filter(record)  # what configure_logging's handler adds
        logged = json.loads(JsonFormatter().format(record))
        with audit_trail_at(tmp_path / "audit.log") as trail:
            await audit.record("issued", **FIELDS)  # type: ignore[arg-type]
            (sunk,) = trail.lines()
    finally:
        REQUEST_ID.reset(reset)
    assert list(sunk) == list(logged)
    assert {k: v for k, v in sunk.items() if k != "time"} == {
        k: v for k, v in logged.items() if k != "time"
    }
    assert sunk["labels"]["note"] == "[redacted]"
    assert "eyJ" not in json.dumps(sunk)
    assert sunk["request_id"] == "req-1"


async def test_a_level_above_info_turns_sink_lines_off(tmp_path: Path) -> None:
    """WARNING on the audit logger silences the sink too, as it silences logging."""
    with audit_trail_at(tmp_path / "audit.log") as trail:
        logging.getLogger(audit.log.name).setLevel(logging.WARNING)
        await audit.record("issued", caller="airflow", profile="ingestion")
        assert trail.lines() == []
