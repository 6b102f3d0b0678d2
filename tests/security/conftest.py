"""Adversarial suite: one module per class of attack, against a real broker, issuer and Redis.

``attack`` runs the broker app in-process (real Redis, real oidc-provider behind a counting
proxy) and checks, for every request a test sends through it, what must hold whatever the
input: no 5xx, every error an RFC 6749 body, and nothing the test marks as caller input in
the answer. At teardown it checks that no error-level line was logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.attack import Attack
from tests.support.broker import files, running_broker, write_config
from tests.support.clock import FakeClock
from tests.support.processes import OidcProvider

# ``files`` is a fixture defined in tests/support/broker.py, re-exported so pytest finds it.
__all__ = ["attack", "files"]


@pytest.fixture
async def attack(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Attack]:
    """The broker on the session issuer and Redis; asserts no error-level log line at the end."""
    broker_files = write_config(tmp_path, issuer)
    clock = FakeClock()
    settings = broker_files.settings(redis_url)
    caplog.set_level(logging.DEBUG)
    async with running_broker(settings, clock=clock) as client:
        yield Attack(client, broker_files, issuer, clock, settings)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors
