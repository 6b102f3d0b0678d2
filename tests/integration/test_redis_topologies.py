"""Redis over TLS (``rediss://``) and through Sentinel, with a real failover, all on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config.settings import Settings
from service.store.crypto import TokenCipher, parse_cache_keys
from service.store.redis import PREFIX
from tests.support import OidcProvider
from tests.support.broker import bearer, running_broker, write_config
from tests.support.redis_topology import (
    SentinelTopology,
    TlsFiles,
    TlsRedis,
    make_ca,
    make_tls_files,
)

REDIS_PASSWORD = "redis-Pa55word-for-tests"
TOKEN_KEYS = PREFIX + "token:*"
FAILOVER_TIMEOUT_SECONDS = 15.0
RECOVERY_TIMEOUT_SECONDS = 10.0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 (IP SAN only)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[TlsRedis]:
    """A TLS-only redis-server (no plain port) for this module."""
    server = TlsRedis(tmp_path_factory.mktemp("redis-tls"), tls_files)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls_redis(tls_server: TlsRedis) -> TlsRedis:
    """The module's TLS Redis, emptied for this test."""
    with tls_server.client() as client:
        client.flushall()
    return tls_server


@pytest.fixture
def sentinel_topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    """Master + replica + sentinel, password everywhere; torn down (killed) after the test.

    One sentinel: two that both see the master down can split their vote, and Sentinel then
    waits 2 x failover-timeout before trying again, which makes the failover time erratic.
    """
    topology = SentinelTopology(tmp_path / "sentinel", password=REDIS_PASSWORD)
    with topology:
        topology.start()
        yield topology


async def cache_check(client: httpx.AsyncClient) -> tuple[str, str]:
    """``/readyz``'s overall status and its cache check."""
    body = (await client.get("/readyz")).json()
    return body["status"], body["checks"]["cache"]


async def ask(
    client: httpx.AsyncClient, key: str, scopes: list[str] | None = None
) -> httpx.Response:
    """POST /v1/token for profile ``ingestion`` (optionally narrowed to ``scopes``)."""
    body: dict[str, Any] = {"profile": "ingestion"}
    if scopes is not None:
        body["scopes"] = scopes
    return await client.post("/v1/token", json=body, headers=bearer(key))


def decrypt(settings: Settings, name: bytes, blob: bytes) -> bytes:
    """Open a cached value with the broker's cache key (values are bound to their Redis key)."""
    assert settings.cache_keys is not None
    return TokenCipher(parse_cache_keys(settings.cache_keys.get_secret_value())).decrypt(blob, name)


# -- TLS ------------------------------------------------------------------------------------


async def test_tls_redis_holds_the_encrypted_token(
    tmp_path: Path, issuer: OidcProvider, tls_redis: TlsRedis
) -> None:
    """Over rediss:// verified with TOKEN_BROKER_REDIS_CA_FILE: ready, and Redis holds the blob."""
    files = write_config(tmp_path, issuer)
    settings = files.settings(tls_redis.url, redis_ca_file=tls_redis.tls.ca_cert)
    async with running_broker(settings) as client:
        assert await cache_check(client) == ("ready", "ok")
        response = await ask(client, files.keys["airflow"])
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
    with tls_redis.client() as redis_client:
        names = redis_client.keys(TOKEN_KEYS)
        assert len(names) == 1
        blob = redis_client.get(names[0])
    assert isinstance(blob, bytes)
    assert token.encode() not in blob
    assert token.encode() in decrypt(settings, names[0], blob)


@pytest.mark.parametrize(
    "case", ["another CA", "host name not in the certificate", "plain redis:// to the TLS port"]
)
async def test_tls_failure_degrades_but_serves(
    case: str, tmp_path: Path, issuer: OidcProvider, tls_redis: TlsRedis
) -> None:
    """A TLS server that fails verification (or a plain client) is never used: the broker
    serves from the issuer and memory, /readyz reports the cache not ok, nothing is written."""
    port = tls_redis.port
    url, ca_file = {
        "another CA": (tls_redis.url, make_ca(tmp_path / "other", "other-ca")[0]),
        "host name not in the certificate": (f"rediss://localhost:{port}/0", tls_redis.tls.ca_cert),
        "plain redis:// to the TLS port": (f"redis://127.0.0.1:{port}/0", None),
    }[case]
    files = write_config(tmp_path, issuer)
    settings = files.settings(url, redis_ca_file=ca_file)
    async with running_broker(settings) as client:
        first = await ask(client, files.keys["airflow"])
        second = await ask(client, files.keys["airflow"])
        status, cache = await cache_check(client)
    assert first.status_code == second.status_code == 200, first.text
    assert first.headers["Token-Broker-Source"] == "issuer"
    assert second.headers["Token-Broker-Source"] == "cache"
    assert second.json()["access_token"] == first.json()["access_token"]
    assert cache != "ok"
    assert status != "ready"
    assert issuer.proxy.token_requests == 1
    with tls_redis.client() as redis_client:
        assert redis_client.dbsize() == 0


async def test_tls_sentinel_issues_through_the_master(
    tmp_path: Path, issuer: OidcProvider, tls_files: TlsFiles
) -> None:
    """rediss+sentinel:// (TLS to sentinel and master, password on both): ready, token stored."""
    with SentinelTopology(tmp_path / "tls-sentinel", password=REDIS_PASSWORD, tls=tls_files) as top:
        top.start()
        files = write_config(tmp_path, issuer)
        settings = files.settings(top.url(), redis_ca_file=tls_files.ca_cert)
        async with running_broker(settings) as client:
            assert await cache_check(client) == ("ready", "ok")
            response = await ask(client, files.keys["airflow"])
            assert response.status_code == 200, response.text
        master = top.master_port()
        assert master is not None
        with top.client(master) as redis_client:
            assert len(redis_client.keys(TOKEN_KEYS)) == 1


# -- Sentinel failover ----------------------------------------------------------------------


def token_keys(topology: SentinelTopology, port: int) -> set[bytes]:
    """The cached-token keys on the data node at ``port``."""
    with topology.client(port) as client:
        return set(client.keys(TOKEN_KEYS))


async def test_sentinel_failover_keeps_serving(
    tmp_path: Path,
    issuer: OidcProvider,
    sentinel_topology: SentinelTopology,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Killing the master never fails a request; after the failover, tokens go to the new master."""
    topology = sentinel_topology
    files = write_config(tmp_path, issuer)
    # A sentinel that is down comes first in the list: the broker must go on to the next.
    settings = files.settings(topology.url(dead_sentinels=1), redis_probe_seconds=0.5)
    key = files.keys["airflow"]
    # Every scope set is a separate cache entry, so each one first used forces an exchange.
    fresh = [
        ["ingestion"], ["read"], ["write"], ["ingestion", "read"], ["ingestion", "write"],
        ["read", "write"],
    ]  # fmt: skip
    statuses: list[int] = []

    async with running_broker(settings) as client:
        assert await cache_check(client) == ("ready", "ok")
        cached = await ask(client, key)
        assert cached.status_code == 200, cached.text
        token = cached.json()["access_token"]
        old_master = topology.master_port()
        assert old_master is not None
        assert len(token_keys(topology, old_master)) == 1

        killed = await asyncio.to_thread(topology.kill_master)
        assert killed == old_master
        failover = asyncio.create_task(
            asyncio.to_thread(topology.wait_for_failover, killed, FAILOVER_TIMEOUT_SECONDS)
        )
        # During the failover window: the cached token keeps being served, and a request that
        # needs an exchange gets one (Redis is skipped, not waited for).
        during = await ask(client, key, fresh.pop(0))
        statuses.append(during.status_code)
        while not failover.done():
            response = await ask(client, key)
            statuses.append(response.status_code)
            assert response.status_code != 200 or response.json()["access_token"] == token
            await asyncio.sleep(0.05)
        new_master, waited = await failover
        print(f"sentinel failover took {waited:.2f}s after {len(statuses)} requests")  # -rP
        assert new_master != old_master
        before = await asyncio.to_thread(token_keys, topology, new_master)

        # After the failover: a fresh exchange reaches the new master once the broker's own
        # probe (every redis_probe_seconds, no readiness check needed) finds Redis again.
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        written: set[bytes] = set()
        while fresh and not written and time.monotonic() < deadline:
            response = await ask(client, key, fresh.pop(0))
            statuses.append(response.status_code)
            written = await asyncio.to_thread(token_keys, topology, new_master) - before
            if not written:
                await asyncio.sleep(settings.redis_probe_seconds)
        served_cached = await ask(client, key)
        statuses.append(served_cached.status_code)
        assert await cache_check(client) == ("ready", "ok")

    assert written, "no token reached the new master"
    assert statuses, "no request was made during the failover"
    assert set(statuses) == {200}, statuses
    assert served_cached.json()["access_token"] == token
    assert REDIS_PASSWORD not in caplog.text
