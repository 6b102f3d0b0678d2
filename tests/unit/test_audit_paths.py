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


ISSUED_CASES = [
    FIELDS,
    {**FIELDS, "labels": None, "client": None, "credential": None},
    {**FIELDS, "labels": {}, "scopes": (), "source": "issuer", "expires_in": 0},
    {**FIELDS, "caller": "naïve\u00a0caller", "subject": "svc@example.com", "source": "minted"},
    {**FIELDS, "labels": {"k": "Bearer\u00a0abc", "tbk_k1_s3cr3t": "x", "j": "eyJa.eyJb.c"}},
    {**FIELDS, "labels": {'quote"back\\slash': "line\nbreak", "emoji": "🔑"}},
    {**FIELDS, "token": "tbk_x_opaque-token", "expires_in": 2**40},
]


@pytest.mark.parametrize("fields", ISSUED_CASES)
@pytest.mark.parametrize(
    "rid", [None, "req-1", "eyJhbGciOi.eyJzdWIi.c2ln", "0f" * 16, "eyJabc", "Ⅻ²é", 'a"b']
)
def test_an_issued_line_from_its_template_equals_the_line_built_whole(
    fields: dict[str, object], rid: str | None
) -> None:
    """The spliced template is byte for byte the dict-built, scrubbed line, first time and after."""
    case = {"subject": None, **fields}
    expected_fields = audit.token_fields("issued", **case, detail=None, reason=None)  # type: ignore[arg-type]
    for now, expires_in in ((1_764_700_000.123, case["expires_in"]), (1_764_700_001.9, 7)):
        expected = audit.line_bytes(
            "token issued", {**expected_fields, "expires_in": expires_in}, now, rid
        )
        spliced = audit.issued_line_bytes(
            **{**case, "expires_in": expires_in},  # type: ignore[arg-type]
            now=now,
            rid=rid,
        )
        assert spliced == expected
        assert b"s3cr3t" not in spliced
        assert b"eyJhbGciOi" not in spliced
        assert b"eyJa.eyJb" not in spliced
        assert b"Bearer" not in spliced


def test_issued_line_templates_stay_bounded() -> None:
    """Many distinct tokens never grow the template memory past its bound."""
    for n in range(audit.ISSUED_LINES_MAX * 2 + 5):
        audit.issued_line_bytes(
            **{**FIELDS, "token": f"opaque-{n}"},  # type: ignore[arg-type]
            subject=None,
            now=1.0,
            rid=None,
        )
    assert 0 < len(audit._ISSUED_LINES) <= audit.ISSUED_LINES_MAX
