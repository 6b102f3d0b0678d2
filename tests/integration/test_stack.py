"""The shared process stack of tests, bench and soak: replicas up, serving, and all stopped."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.broker import bearer
from tests.support.stack import Stack


def test_stack_starts_replicas_that_serve_and_stops_every_process(tmp_path: Path) -> None:
    """Two replicas on one Redis and issuer each hand out a token; ``stop`` ends every process."""
    stack = Stack(tmp_path, broker_env={"TOKEN_BROKER_LOG_LEVEL": "INFO"})
    try:
        stack.start_redis()
        stack.start_issuer(3600)
        brokers = stack.start_brokers(2)
        assert [broker.log.name for broker in brokers] == ["broker-0.log", "broker-1.log"]
        with httpx.Client(trust_env=False, timeout=10) as client:
            for broker in brokers:
                answer = client.post(
                    broker.url + "/v1/token",
                    json={"profile": "ingestion"},
                    headers=bearer(stack.api_key()),
                )
                assert answer.status_code == 200, answer.text
        redis, provider = stack.redis, stack.provider
    finally:
        stack.stop()
    assert stack.brokers == []
    assert all(broker.process.poll() is not None for broker in brokers)
    assert redis is not None
    assert not redis.is_running()
    assert provider is not None
    assert not provider.is_running()
