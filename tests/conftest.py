# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""Session-wide backing services: a real Redis and two local OIDC issuers.

Each service starts lazily, once per test session, the first time a test asks for it; all of
them are stopped (process groups killed) at the end of the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import redis

from tests.support.audit_trail import AuditTrail, audit_trail_at
from tests.support.processes import (
    MockServer,
    OidcProvider,
    RedisServer,
    ensure_node_modules,
    start_mock_server,
    start_oidc_provider,
    start_redis,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server on a free 127.0.0.1 port for the whole session."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session Redis, running and emptied (FLUSHALL) for this test."""
    redis_server.resume()
    if not redis_server.is_running():
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """oidc-provider (clients broker-basic/-post/-jwt) behind a CountingProxy, per session."""
    ensure_node_modules()
    provider = start_oidc_provider(tmp_path_factory.mktemp("oidc-provider"))
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def issuer(oidc_provider: OidcProvider) -> OidcProvider:
    """The session oidc_provider with its proxy's counters zeroed and no fault injected."""
    if not oidc_provider.is_running():
        oidc_provider.restart()
    oidc_provider.proxy.set_fault(None)
    oidc_provider.proxy.reset()
    return oidc_provider


@pytest.fixture(scope="session")
def mock_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    """oauth2-mock-server (default expires_in, 1 h tokens) behind a CountingProxy, per session."""
    ensure_node_modules()
    server = start_mock_server(tmp_path_factory.mktemp("oauth2-mock-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def audit_trail(tmp_path: Path) -> Iterator[AuditTrail]:
    """This test's audit lines, written by the audit sink as in a served broker, read back."""
    with audit_trail_at(tmp_path / "audit.log") as trail:
        yield trail
