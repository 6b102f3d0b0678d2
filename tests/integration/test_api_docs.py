"""API documentation pages: off by default (they load Swagger UI from a CDN), schema always on."""

from __future__ import annotations

import pytest

from tests.support.broker import BrokerFiles, running_broker


@pytest.mark.parametrize("docs", [False, True])
async def test_docs_pages_follow_the_setting_and_openapi_is_always_served(
    files: BrokerFiles, docs: bool
) -> None:
    """/docs and /redoc are 404 unless TOKEN_BROKER_DOCS; /openapi.json is 200 either way."""
    async with running_broker(files.settings(docs=docs)) as client:
        for page in ("/docs", "/redoc"):
            assert (await client.get(page)).status_code == (200 if docs else 404)
        schema = await client.get("/openapi.json")
        assert schema.status_code == 200
        assert "/v1/policy" in schema.json()["paths"]


def test_docs_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TOKEN_BROKER_DOCS=true turns the pages on; unset means off."""
    from service.config.settings import Settings  # noqa: PLC0415

    monkeypatch.delenv("TOKEN_BROKER_DOCS", raising=False)
    assert Settings().docs is False
    monkeypatch.setenv("TOKEN_BROKER_DOCS", "true")
    assert Settings().docs is True
