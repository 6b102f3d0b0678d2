"""Crashes and signals: real ``serve`` processes killed or stopped while they work.

Every broker here is a real ``python -m service serve`` subprocess; the replicas share one
real redis-server, and the issuer (oidc-provider) sits behind the counting, fault-injecting
proxy, so "how many exchanges reached the issuer" is counted on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio

from service.store.crypto import new_cache_key
from tests.support import OidcProvider, verify_access_token
from tests.support.broker import BrokerFiles, bearer
from tests.support.broker_process import start_broker, stop_broker, wait_ready

# Short enough that a dead holder's lease runs out inside the test, long enough that a live
# exchange (tens of milliseconds on loopback) never outlives it.
LEASE_SECONDS = 2.0
# Waiters must outlast the dead holder's lease, with room to spare.
WAIT_TIMEOUT_SECONDS = 15.0
# How long the proxy holds the first token request: the holder is killed well inside it.
HOLDER_DELAY_SECONDS = 5.0
LOCK_PATTERN = "token-broker:v1:lock:*"

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One broker subprocess, its URL and its log file."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def records(self) -> list[dict[str, object]]:
        """The JSON log lines the process has written so far."""
        found = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found

    def exchanges(self) -> int:
        """How many exchanges with the issuer this process started (its DEBUG log says)."""
        return sum(
            1
            for record in self.records()
            if record.get("logger") == "token_broker.upstream"
            and record.get("message") == "token exchange"
        )

    def kill(self) -> None:
        """SIGKILL the process group (no shutdown code runs) and reap it."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=5)


Launch = Callable[[int, Mapping[str, str]], list[Replica]]


@pytest.fixture
def launch(files: BrokerFiles, redis_url: str, tmp_path: Path) -> Iterator[Launch]:
    """Start ``count`` replicas on the test Redis with one cache key; all stopped afterwards."""
    cache_key = new_cache_key()
    started: list[Replica] = []

    def start(count: int, env: Mapping[str, str]) -> list[Replica]:
        batch = []
        for _ in range(count):
            log_file = tmp_path / f"broker-{len(started)}.log"
            process, url = start_broker(
                files, log_file, redis_url=redis_url, cache_key=cache_key, extra_env=env
            )
            replica = Replica(process, url, log_file)
            started.append(replica)
            batch.append(replica)
        for replica in batch:
            wait_ready(replica.url, replica.process, replica.log)
        return batch

    try:
        yield start
    finally:
        for replica in started:
            stop_broker(replica.process)


def token_request(client: httpx.AsyncClient, url: str, key: str) -> asyncio.Task[httpx.Response]:
    """``POST /v1/token`` for profile ``ingestion``, started as a task."""
    return asyncio.create_task(
        client.post(url + "/v1/token", json={"profile": "ingestion"}, headers=bearer(key))
    )


async def wait_for_holder(replicas: list[Replica], timeout: float = 3.0) -> Replica:
    """The one replica that has started an exchange (its log line is written asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        holders = [replica for replica in replicas if replica.exchanges() > 0]
        if holders or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert len(holders) == 1, f"expected one replica exchanging, got {len(holders)}"
    return holders[0]


async def lock_pttl_ms(redis_url: str) -> int:
    """Milliseconds left on the (single) refresh lease in Redis."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        names = [name async for name in client.scan_iter(match=LOCK_PATTERN)]
        assert len(names) == 1, f"expected one refresh lease in Redis, found {len(names)}"
        return int(await client.pttl(names[0]))
    finally:
        await client.aclose()


async def test_killed_lock_holder_is_replaced_by_exactly_one_exchange(
    launch: Launch,
    files: BrokerFiles,
    issuer: OidcProvider,
    redis_url: str,
) -> None:
    """Lease holder SIGKILLed mid-exchange: one successor exchanges after the lease expires."""
    env = {
        "TOKEN_BROKER_LOCK_LEASE_SECONDS": str(LEASE_SECONDS),
        "TOKEN_BROKER_WAIT_TIMEOUT_SECONDS": str(WAIT_TIMEOUT_SECONDS),
        "TOKEN_BROKER_UPSTREAM_DEADLINE_SECONDS": "10",
    }
    replicas = launch(3, env)
    issuer.proxy.set_fault("delay", delay_seconds=HOLDER_DELAY_SECONDS, times=1)
    key = files.keys["airflow"]
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
    tasks: dict[str, list[asyncio.Task[httpx.Response]]] = {}
    try:
        async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=30) as client:
            tasks = {
                replica.url: [token_request(client, replica.url, key) for _ in range(4)]
                for replica in replicas
            }
            assert await asyncio.to_thread(issuer.proxy.wait_for_token_requests, 1, 10.0)
            holder = await wait_for_holder(replicas)
            survivors = [replica for replica in replicas if replica is not holder]

            holder.kill()
            measured_at = time.monotonic()
            pttl = await lock_pttl_ms(redis_url)
            # The dead holder's lease is still there: the survivors have to wait it out.
            assert 0 < pttl <= LEASE_SECONDS * 1000
            lease_expiry = measured_at + pttl / 1000
            assert await asyncio.to_thread(issuer.proxy.wait_for_token_requests, 2, 10.0)
            successor_exchange = time.monotonic()

            lost = await asyncio.gather(*tasks[holder.url], return_exceptions=True)
            answered = await asyncio.wait_for(
                asyncio.gather(*(t for s in survivors for t in tasks[s.url])), timeout=15
            )
            await asyncio.sleep(0.3)  # room for a stray late exchange to show up
    finally:
        issuer.proxy.set_fault(None)  # release the dead holder's request held in the proxy
        for task in (t for batch in tasks.values() for t in batch):
            task.cancel()  # only left pending when an assertion above failed

    assert all(isinstance(outcome, httpx.TransportError) for outcome in lost)
    assert [r.status_code for r in answered] == [200] * len(answered), answered[0].text
    tokens = {r.json()["access_token"] for r in answered}
    assert len(tokens) == 1
    _, claims = verify_access_token(tokens.pop(), issuer.jwks())
    assert claims["client_id"] == "broker-basic"
    # Exactly one further exchange (the killed holder's plus one successor's), by one survivor,
    # and not before the dead holder's lease ran out.
    assert issuer.proxy.token_requests == 2
    assert sorted(s.exchanges() for s in survivors) == [0, 1]
    delay = successor_exchange - lease_expiry
    log.info("lease expiry to the successor's exchange: %.3f s", delay)
    assert -0.02 <= delay < LEASE_SECONDS, delay


async def test_sigterm_drains_in_flight_request_then_exits(
    files: BrokerFiles, issuer: OidcProvider, tmp_path: Path
) -> None:
    """SIGTERM: listener closes at once, the in-flight request completes, then the process exits."""
    log_file = tmp_path / "broker.log"
    process, url = start_broker(files, log_file)
    try:
        wait_ready(url, process, log_file)
        # Long enough that, even on a loaded machine, the listener closes while it is in flight.
        issuer.proxy.set_fault("delay", delay_seconds=6.0)
        async with httpx.AsyncClient(trust_env=False, timeout=20) as client:
            in_flight = token_request(client, url, files.keys["airflow"])
            assert await asyncio.to_thread(issuer.proxy.wait_for_token_requests, 1, 10.0)
            sent_at = time.monotonic()
            os.kill(process.pid, signal.SIGTERM)

            refused = False
            deadline = sent_at + 4.0
            while not refused and time.monotonic() < deadline:
                try:
                    # A fresh client each time: a new connection, never a pooled one.
                    async with httpx.AsyncClient(trust_env=False, timeout=0.5) as probe:
                        await probe.get(url + "/healthz")
                except httpx.ConnectError:
                    refused = True
                else:
                    await asyncio.sleep(0.05)
            assert refused, "new connections still accepted 4 s after SIGTERM"
            assert not in_flight.done(), "the in-flight request ended before the issuer answered"

            response = await asyncio.wait_for(in_flight, timeout=15)
        status = await asyncio.to_thread(process.wait, 15)
        exited_after = time.monotonic() - sent_at
    finally:
        stop_broker(process)

    assert response.status_code == 200, response.text
    verify_access_token(response.json()["access_token"], issuer.jwks())
    assert issuer.proxy.token_requests == 1
    # A graceful shutdown is a clean exit: status 0, not "killed by SIGTERM".
    assert status == 0
    assert exited_after < 15  # bounded: the drain, then a shutdown whose every step is bounded
    text = log_file.read_text()
    issued = text.index('"outcome":"issued"')
    assert issued < text.index("Waiting for application shutdown")
    assert "Application shutdown complete" in text


async def test_idle_replica_killed_leaves_the_others_unaffected(
    launch: Launch, files: BrokerFiles, issuer: OidcProvider
) -> None:
    """An idle replica SIGKILLed: the others keep serving, with no extra issuer request."""
    replicas = launch(3, {})
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        first = await token_request(client, replicas[0].url, files.keys["airflow"])
        assert first.status_code == 200, first.text
        replicas[0].kill()
        started = time.monotonic()
        cached = await asyncio.gather(
            *(
                token_request(client, replica.url, files.keys["airflow"])
                for replica in replicas[1:]
                for _ in range(5)
            )
        )
        # A key the dead replica never touched: one exchange, no lease left to wait out.
        cold = await asyncio.gather(
            *(
                token_request(client, replica.url, files.keys["reader"])
                for replica in replicas[1:]
                for _ in range(5)
            )
        )
        elapsed = time.monotonic() - started
    assert {r.status_code for r in [*cached, *cold]} == {200}
    assert {r.json()["access_token"] for r in cached} == {first.json()["access_token"]}
    assert len({r.json()["access_token"] for r in cold}) == 1
    assert issuer.proxy.token_requests == 2
    assert elapsed < 5


async def test_exchange_slower_than_the_lease_is_not_duplicated(
    launch: Launch, files: BrokerFiles, issuer: OidcProvider
) -> None:
    """An exchange that outlasts one lease keeps it: the other replica waits, no second one."""
    env = {
        "TOKEN_BROKER_LOCK_LEASE_SECONDS": str(LEASE_SECONDS),
        "TOKEN_BROKER_WAIT_TIMEOUT_SECONDS": str(WAIT_TIMEOUT_SECONDS),
        "TOKEN_BROKER_UPSTREAM_DEADLINE_SECONDS": "10",
    }
    replicas = launch(2, env)
    issuer.proxy.set_fault("delay", delay_seconds=LEASE_SECONDS * 1.5)
    key = files.keys["airflow"]
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            answered = await asyncio.gather(
                *(token_request(client, r.url, key) for r in replicas for _ in range(3))
            )
    finally:
        issuer.proxy.set_fault(None)
    assert {r.status_code for r in answered} == {200}
    assert issuer.proxy.token_requests == 1
    assert len({r.json()["access_token"] for r in answered}) == 1
