"""Misconfiguration is loud: an unreachable Redis at start, and ``check-config --connect``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.store.crypto import new_cache_key
from service.store.redis import RedisHealth
from tests.support import OidcProvider, RedisServer, free_port
from tests.support.broker import BrokerFiles, bearer, write_config
from tests.support.broker_process import (
    broker_env,
    run_cli,
    start_broker,
    stop_broker,
    wait_ready,
)
from tests.support.redis_topology import SERVICE_NAME, SentinelTopology

REDIS_PASSWORD = "misconfig-Redis-pa55word-never-logged"
REACH_TIMEOUT_SECONDS = 15.0


def _log_records(log: Path) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _metric(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def _wait_for(check: Any, what: str, log: Path) -> None:
    deadline = time.monotonic() + REACH_TIMEOUT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen in time: {log.read_text()[-3000:]}")
        time.sleep(0.1)


def test_unreachable_redis_at_start_is_logged_served_around_and_reached_later(
    tmp_path: Path, files: BrokerFiles
) -> None:
    """A closed Redis port: error naming host:port, ready, serves, readyz and metrics say so,
    then a Redis on that port is reached and logged; the password never appears."""
    port = free_port()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    log = tmp_path / "broker.log"
    process, base = start_broker(
        files,
        log,
        redis_url=url,
        cache_key=new_cache_key(),
        extra_env={"TOKEN_BROKER_REDIS_PROBE_SECONDS": "0.2"},
    )
    server: RedisServer | None = None
    try:
        wait_ready(base, process, log)
        with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
            response = client.post(
                "/v1/token", json={"profile": "ingestion"}, headers=bearer(files.keys["airflow"])
            )
            assert response.status_code == 200, response.text
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["checks"]["cache"] == "degraded"
            assert ready.json()["checks"]["redis_detail"] == "never reached"
            assert _metric(client.get("/metrics").text, "token_broker_redis_up") == 0

            errors = [
                r
                for r in _log_records(log)
                if r.get("level") == "error" and "redis never reached" in r.get("message", "")
            ]
            assert errors, log.read_text()[-3000:]
            assert errors[0]["redis"] == f"127.0.0.1:{port}"
            assert errors[0]["reason"].startswith("ConnectionRefusedError")

            server = RedisServer(tmp_path / "redis", port=port)
            server.start()
            with redis.Redis(port=port, socket_timeout=5) as admin:
                admin.config_set("requirepass", REDIS_PASSWORD)

            def reached() -> bool:
                return any(r.get("message") == "redis reached" for r in _log_records(log))

            _wait_for(reached, "'redis reached'", log)
            _wait_for(lambda: client.get("/readyz").json()["status"] == "ready", "ready", log)
            assert _metric(client.get("/metrics").text, "token_broker_redis_up") == 1
            assert "redis_detail" not in client.get("/readyz").json()["checks"]
    finally:
        stop_broker(process)
        if server is not None:
            server.stop()
    assert REDIS_PASSWORD not in log.read_text()


def test_never_reached_error_repeats_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    """Failures before Redis was ever reached log an error at most once per alarm interval."""
    now = [0.0]
    health = RedisHealth(
        probe_interval=1, clock=lambda: now[0], target="127.0.0.1:1", alarm_interval=60
    )
    refused = ConnectionRefusedError(111, "Connection refused")
    with caplog.at_level(logging.INFO, logger="token_broker.cache"):
        for second in (0, 10, 59, 60, 61, 130):
            now[0] = second
            health.failed(refused)
        health.succeeded()
        health.failed(refused)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    errors = [m for level, m in messages if level == "ERROR"]
    assert len(errors) == 3  # at 0, 60 and 130 s
    assert ("INFO", "redis reached") in messages
    assert messages[-1][0] == "WARNING"  # lost after being reached: the outage warning
    assert all(getattr(r, "redis", None) == "127.0.0.1:1" for r in caplog.records)


# -- check-config --connect -----------------------------------------------------------------


def _check(files: BrokerFiles, redis_url: str | None, *extra: str) -> tuple[int, str]:
    env = broker_env(TOKEN_BROKER_CONFIG=str(files.config))
    if redis_url is not None:
        env["TOKEN_BROKER_REDIS_URL"] = redis_url
        env["TOKEN_BROKER_CACHE_KEYS"] = new_cache_key()
    result = run_cli(["check-config", *extra], env)
    return result.returncode, result.stdout + result.stderr


def _assert_no_secret(files: BrokerFiles, output: str) -> None:
    for secret in [*files.secrets, REDIS_PASSWORD]:
        assert secret not in output


def test_connect_reports_ok_lines_and_exit_0_when_everything_answers(
    files: BrokerFiles, redis_server: RedisServer, redis_url: str
) -> None:
    """--connect with Redis and the issuer up: one ok line per target, exit 0."""
    code, output = _check(files, redis_url, "--connect")
    assert code == 0, output
    assert f"ok   redis 127.0.0.1:{redis_server.port} (PING " in output
    assert "ok   discovery profile ingestion " in output
    assert "ok   token_endpoint profile ingestion " in output
    _assert_no_secret(files, output)


def test_connect_asks_the_sentinels_for_the_master_then_pings_it(
    tmp_path: Path, files: BrokerFiles
) -> None:
    """--connect with Sentinel: one ok line naming the sentinels, the master name and the
    master the sentinels returned; the shared password is not printed."""
    with SentinelTopology(tmp_path / "sentinel", password=REDIS_PASSWORD) as topology:
        topology.start()
        code, output = _check(files, topology.url(), "--connect")
        master = topology.master_port()
    assert code == 0, output
    sentinels = ",".join(f"127.0.0.1:{port}" for port in topology.sentinel_ports)
    expected = f"ok   redis sentinel {sentinels} master {SERVICE_NAME} -> 127.0.0.1:{master} ("
    assert expected in output
    _assert_no_secret(files, output)


def test_connect_fails_on_a_closed_redis_port_naming_it_without_the_password(
    files: BrokerFiles,
) -> None:
    """--connect with nothing on the Redis port: a FAIL line naming host:port, exit 1."""
    port = free_port()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    code, output = _check(files, url, "--connect")
    assert code == 1, output
    assert f"FAIL redis 127.0.0.1:{port}: ConnectionRefusedError" in output
    assert "ok   discovery profile ingestion " in output
    _assert_no_secret(files, output)


def test_connect_fails_on_an_issuer_on_a_closed_port(tmp_path: Path, issuer: OidcProvider) -> None:
    """--connect with the profile's issuer on a closed port: a FAIL discovery line, exit 1."""
    port = free_port()
    files = write_config(
        tmp_path, issuer, profile_extra={"issuer": f"http://127.0.0.1:{port}/oidc"}
    )
    code, output = _check(files, None, "--connect")
    assert code == 1, output
    assert f"FAIL discovery profile ingestion http://127.0.0.1:{port}/oidc/" in output
    _assert_no_secret(files, output)


def test_connect_with_a_token_endpoint_skips_discovery(
    tmp_path: Path, issuer: OidcProvider
) -> None:
    """A profile naming its token_endpoint is checked there only, without discovery."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/token"
    files = write_config(tmp_path, issuer, profile_extra={"token_endpoint": endpoint})
    code, output = _check(files, None, "--connect")
    assert code == 1, output
    assert "discovery" not in output
    assert f"FAIL token_endpoint profile ingestion {endpoint}: ConnectError" in output


def test_without_connect_nothing_is_reached(files: BrokerFiles) -> None:
    """Plain check-config does not try Redis: a closed port still validates, exit 0."""
    code, output = _check(files, f"redis://127.0.0.1:{free_port()}/0")
    assert code == 0, output
    assert "redis" not in output


def test_cluster_url_says_cluster_is_not_supported(files: BrokerFiles) -> None:
    """A redis+cluster:// URL is refused with a message naming Cluster as unsupported."""
    code, output = _check(files, f"redis+cluster://:{REDIS_PASSWORD}@127.0.0.1:7000", "--connect")
    assert code == 1, output
    assert "Redis Cluster is not supported yet" in output
    _assert_no_secret(files, output)
