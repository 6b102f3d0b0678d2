"""``POST /bench/bare`` (``make bench``'s yardstick): off by default, shaped like a hand-out."""

from __future__ import annotations

import httpx

from tests.support.broker import BrokerFiles, bearer, running_broker

BODY = {"profile": "ingestion", "scopes": ["ingestion"], "min_ttl": 1800, "labels": {"a": "b"}}


async def _post(client: httpx.AsyncClient, path: str, key: str) -> httpx.Response:
    return await client.post(path, json=BODY, headers=bearer(key))


async def test_bare_endpoint_is_absent_by_default(files: BrokerFiles) -> None:
    async with running_broker(files.settings()) as client:
        response = await _post(client, "/bench/bare", files.keys["airflow"])
        spec = (await client.get("/openapi.json")).json()
    assert response.status_code == 404
    assert not any(path.startswith("/bench") for path in spec["paths"])


async def test_bare_endpoint_answers_like_a_cached_hand_out(files: BrokerFiles) -> None:
    key = files.keys["airflow"]
    async with running_broker(files.settings(bench_endpoints=True)) as client:
        await _post(client, "/v1/token", key)
        token = await _post(client, "/v1/token", key)
        bare = await _post(client, "/bench/bare", key)
        wrong_type = await client.post("/bench/bare", content=b"{}", headers=bearer(key))
        unknown = await client.post("/bench/bare", json={**BODY, "x": 1})
        spec = (await client.get("/openapi.json")).json()
    assert token.status_code == bare.status_code == 200
    assert token.headers["token-broker-source"] == "cache"
    assert len(bare.content) == len(token.content)
    assert sorted(bare.json()) == sorted(token.json())
    assert sorted(bare.headers) == sorted(token.headers)
    assert bare.headers["cache-control"] == "no-store"
    # The same parsing as /v1/token: content type and strict validation.
    assert wrong_type.status_code == unknown.status_code == 400
    assert not any(path.startswith("/bench") for path in spec["paths"])
