"""The audit trail: run labels and a token fingerprint on every issuance, never the token."""

from __future__ import annotations

import hashlib
import logging

import pytest

from service.observe.logs import JsonFormatter
from tests.support.audit_trail import AuditTrail
from tests.support.broker import BrokerFiles, bearer, running_broker

LABELS = {
    "dag_id": "om_ingest_snowflake",
    "task_id": "ingest",
    "run_id": "scheduled__2026-11-22T00:00:00+00:00",
    "pod": "airflow-worker-0",
}


async def test_issuance_line_carries_labels_and_fingerprint(
    files: BrokerFiles, caplog: pytest.LogCaptureFixture, audit_trail: AuditTrail
) -> None:
    """labels sent with POST /v1/token and the token's fingerprint appear in its audit line."""
    caplog.set_level(logging.INFO)
    async with running_broker(files.settings()) as client:
        response = await client.post(
            "/v1/token",
            json={"profile": "ingestion", "labels": LABELS},
            headers=bearer(files.keys["airflow"]),
        )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    (line,) = [entry for entry in audit_trail.lines() if entry["outcome"] == "issued"]
    assert line["caller"] == "airflow"
    assert line["credential"] == "api_key"
    assert line["profile"] == "ingestion"
    assert line["labels"] == LABELS
    assert line["fingerprint"] == hashlib.sha256(token.encode()).hexdigest()[:16]
    assert line["source"] == "issuer"
    assert line["client"] == "127.0.0.1"
    rendered = (
        "".join(JsonFormatter().format(record) for record in caplog.records) + audit_trail.text()
    )
    assert token not in rendered
    assert files.keys["airflow"] not in rendered


async def test_denial_line_carries_labels_and_reason(
    files: BrokerFiles, caplog: pytest.LogCaptureFixture, audit_trail: AuditTrail
) -> None:
    """A refused request is audited with its labels, the reason and no fingerprint."""
    caplog.set_level(logging.INFO)
    async with running_broker(files.settings()) as client:
        response = await client.post(
            "/v1/token",
            json={"profile": "ingestion", "scopes": ["write"], "labels": LABELS},
            headers=bearer(files.keys["reader"]),
        )
    assert response.status_code == 403
    (line,) = [entry for entry in audit_trail.lines() if entry["outcome"] == "denied"]
    assert line["caller"] == "reader"
    assert line["reason"] == "invalid_scope"
    assert line["labels"] == LABELS
    assert line["fingerprint"] is None


@pytest.mark.parametrize(
    ("caller", "form"),
    [("idle", {}), ("reader", {"resource": "urn:not-a-profile-of-reader"})],
    ids=["no-grant-no-resource", "unmatched-resource"],
)
async def test_facade_refusals_are_403_and_audited(
    files: BrokerFiles,
    caplog: pytest.LogCaptureFixture,
    audit_trail: AuditTrail,
    caller: str,
    form: dict[str, str],
) -> None:
    """/oauth2/token for a caller without a matching grant: 403, one audited denial."""
    caplog.set_level(logging.INFO)
    async with running_broker(files.settings()) as client:
        response = await client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": caller,
                "client_secret": files.keys[caller],
                **form,
            },
        )
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "unauthorized_client"
    (line,) = [entry for entry in audit_trail.lines() if entry["outcome"] == "denied"]
    assert line["caller"] == caller
    assert line["profile"] == "(unknown)"
    assert line["reason"] == "unauthorized_client"
    rendered = (
        "".join(JsonFormatter().format(record) for record in caplog.records) + audit_trail.text()
    )
    assert "not-a-profile" not in rendered  # caller input never reaches the log
