"""Several broker processes on one Redis behave as one broker towards the issuer."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.store.crypto import new_cache_key
from tests.support import OidcProvider
from tests.support.broker import BrokerFiles, bearer
from tests.support.broker_process import start_broker, stop_broker, wait_ready


@pytest.fixture
def replicas(
    files: BrokerFiles, redis_url: str, tmp_path: Path
) -> Iterator[tuple[list[str], list[Path]]]:
    """Three `token-broker serve` processes sharing one Redis and one cache key."""
    cache_key = new_cache_key()
    started = []
    try:
        for index in range(3):
            log = tmp_path / f"broker-{index}.log"
            process, url = start_broker(files, log, redis_url=redis_url, cache_key=cache_key)
            started.append((process, url, log))
        for process, url, log in started:
            wait_ready(url, process, log)
        yield [url for _, url, _ in started], [log for _, _, log in started]
    finally:
        for process, _, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _, _ in started:
            stop_broker(process)


async def test_three_replicas_one_issuer_request(
    replicas: tuple[list[str], list[Path]], files: BrokerFiles, issuer: OidcProvider
) -> None:
    """300 concurrent requests spread over 3 processes on a cold cache make 1 issuer request."""
    urls, logs = replicas
    issuer.proxy.set_fault("delay", delay_seconds=0.5)
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
    async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    urls[i % 3] + "/v1/token",
                    json={"profile": "ingestion", "labels": {"dag_id": "demo"}},
                    headers=bearer(files.keys["airflow"]),
                )
                for i in range(300)
            )
        )
        denied = await client.post(
            urls[0] + "/v1/token",
            json={"profile": "ingestion"},
            headers=bearer("tbk_abcd_" + "x" * 20),
        )
    assert {r.status_code for r in responses} == {200}
    tokens = {r.json()["access_token"] for r in responses}
    assert len(tokens) == 1
    assert issuer.proxy.token_requests == 1
    assert denied.status_code == 401
    # The processes' real log output holds audit lines but no token, key or secret.
    await asyncio.sleep(0.3)  # the log listener thread flushes asynchronously
    text = "".join(log.read_text() for log in logs)
    assert '"outcome":"issued"' in text
    assert '"outcome":"denied"' in text
    for needle in [*tokens, *files.secrets, "tbk_abcd_" + "x" * 20]:
        assert needle not in text
