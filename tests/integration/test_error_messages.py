"""POST /v1/token errors say what the broker accepts, never what the caller sent."""

from __future__ import annotations

from tests.support.broker import BrokerFiles, bearer, running_broker

UNKNOWN = "client_secret_Zq9-unknown-field-name"


async def test_unknown_field_lists_the_accepted_fields_without_echoing_it(
    files: BrokerFiles,
) -> None:
    """An unknown JSON field is a 400 listing profile, scopes, min_ttl, labels; not its name."""
    async with running_broker(files.settings()) as client:
        response = await client.post(
            "/v1/token",
            json={"profile": "ingestion", UNKNOWN: "value-Zq9"},
            headers=bearer(files.keys["airflow"]),
        )
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    description = body["error_description"]
    assert description == "unknown field; accepted fields: profile, scopes, min_ttl, labels"
    assert "Zq9" not in response.text


async def test_bad_min_ttl_names_the_expected_form(files: BrokerFiles) -> None:
    """A min_ttl of the wrong type says seconds or a duration, in the broker's words."""
    async with running_broker(files.settings()) as client:
        response = await client.post(
            "/v1/token",
            json={"profile": "ingestion", "min_ttl": [60]},
            headers=bearer(files.keys["airflow"]),
        )
    assert response.status_code == 400
    description = response.json()["error_description"]
    assert description == "min_ttl: expected seconds, or a duration like 90m or 4h"
