"""No secret, API key or token reaches a log record or an error body, even before scrubbing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.logs import JsonFormatter, TextFormatter, scrub
from tests.integration.conftest import bearer, running_broker, write_config
from tests.support import OidcProvider


async def test_logs_and_error_bodies_hold_no_secrets(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issuance, denials, bad credentials and issuer refusals leave no secret in any record."""
    files = write_config(tmp_path, issuer)
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    tokens: list[str] = []
    wrong_key = "tbk_0000_" + "s" * 30
    async with running_broker(files.settings(redis_url)) as client:
        ok = await client.post(
            "/v1/token", json={"profile": "ingestion"}, headers=bearer(files.keys["airflow"])
        )
        tokens.append(ok.json()["access_token"])
        facade = await client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "reader",
                "client_secret": files.keys["reader"],
            },
        )
        tokens.append(facade.json()["access_token"])
        for response in [
            await client.post(
                "/v1/token", json={"profile": "ingestion"}, headers=bearer(wrong_key)
            ),
            await client.post(
                "/v1/token",
                json={"profile": "ingestion", "scopes": ["write"]},
                headers=bearer(files.keys["reader"]),
            ),
            await client.post(
                "/oauth2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "airflow",
                    "client_secret": files.keys["reader"],
                },
            ),
            await client.post(
                "/v1/token",
                content=b'{"profile": "' + files.keys["airflow"].encode() + b'"}',
                headers={**bearer(files.keys["airflow"]), "content-type": "application/json"},
            ),
        ]:
            assert 400 <= response.status_code < 500
            bodies.append(response.text)
        (tmp_path / "broker-basic.secret").write_text("rotated-but-wrong")
        refused = await client.post(
            "/v1/token",
            json={"profile": "ingestion", "scopes": ["write"]},
            headers=bearer(files.keys["airflow"]),
        )
        assert refused.status_code == 502
        bodies.append(refused.text)
    needles = [*files.secrets, *tokens, wrong_key, "rotated-but-wrong"]
    assert caplog.records, "the flow should have logged audit lines"
    rendered = []
    for record in caplog.records:
        rendered.append(record.getMessage() + repr(vars(record)))
        rendered.append(JsonFormatter().format(record))
        rendered.append(TextFormatter().format(record))
    for needle in needles:
        for text in rendered + bodies:
            assert needle not in text


def test_scrub_masks_secret_shapes() -> None:
    """The last-line-of-defence filter masks keys, JWTs and Authorization values."""
    text = scrub(
        "key tbk_ab12cd34_Zm9v-YmFy_baz jwt eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln "
        "header Bearer abc.def-ghi Basic dXNlcjpwYXNz"
    )
    assert "tbk_ab12cd34" not in text
    assert "eyJ" not in text
    assert "abc.def-ghi" not in text
    assert "dXNlcjpwYXNz" not in text
    assert text.count("[redacted]") == 4
