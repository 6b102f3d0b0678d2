# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""A broker for tests: its YAML and API keys on disk, the app in-process, headers, audit lines."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.api.app import create_app
from service.config.settings import Settings
from service.store.crypto import new_cache_key
from tests.support.processes import OidcProvider


@dataclass
class BrokerFiles:
    """A broker YAML on disk and the API keys that the YAML admits."""

    config: Path
    keys: dict[str, str]
    secrets: list[str] = field(default_factory=list)

    def settings(self, redis_url: str | None = None, **overrides: Any) -> Settings:
        """Settings for this config, with Redis and a fresh cache key when ``redis_url``."""
        values: dict[str, Any] = {"config": self.config, **overrides}
        if redis_url is not None:
            values.setdefault("redis_url", redis_url)
            values.setdefault("cache_keys", new_cache_key())
        return Settings(**values)


def new_key(caller: str) -> str:
    """A broker API key shaped like ``token-broker new-key`` makes them."""
    return f"tbk_{secrets.token_hex(4)}_{caller}-{secrets.token_urlsafe(24)}"


def write_config(
    directory: Path,
    issuer: OidcProvider,
    *,
    client_id: str = "broker-basic",
    auth_method: str = "client_secret_basic",
    profile_extra: dict[str, Any] | None = None,
    callers: dict[str, dict[str, Any]] | None = None,
    trusted_issuers: dict[str, dict[str, Any]] | None = None,
) -> BrokerFiles:
    """A YAML with profile ``ingestion`` on ``issuer`` and callers airflow / reader / idle.

    A caller bound to a workload identity (``kubernetes`` or ``workload``) gets no API key.
    """
    client = issuer.client(client_id)
    profile: dict[str, Any] = {
        "provider": "oidc",
        "issuer": issuer.issuer,
        "client_id": client_id,
        "auth_method": auth_method,
        "scopes": list(issuer.scopes),
    }
    known: list[str] = []
    if auth_method == "private_key_jwt":
        profile["private_key"] = {"file": str(client.private_key_pem_path)}
        profile["key_id"] = client.kid
    else:
        assert client.client_secret is not None
        secret_file = directory / f"{client_id}.secret"
        secret_file.write_text(client.client_secret + "\n")
        profile["client_secret"] = {"file": str(secret_file)}
        known.append(client.client_secret)
    profile.update(profile_extra or {})
    wanted = callers or {
        "airflow": {"grants": [{"profile": "ingestion", "max_ttl": "4h"}]},
        "reader": {"grants": [{"profile": "ingestion", "scopes": ["read"]}]},
        "idle": {"grants": []},
    }
    keys = {
        name: new_key(name)
        for name, body in wanted.items()
        if "kubernetes" not in body and "workload" not in body
    }
    document: dict[str, Any] = {
        "profiles": {"ingestion": profile},
        "callers": {
            name: (
                {"api_key_sha256": hashlib.sha256(keys[name].encode()).hexdigest(), **body}
                if name in keys
                else body
            )
            for name, body in wanted.items()
        },
    }
    if trusted_issuers:
        document["trusted_issuers"] = trusted_issuers
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump(document))
    return BrokerFiles(config=path, keys=keys, secrets=known + list(keys.values()))


@asynccontextmanager
async def running_broker(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and an HTTP client talking to it in-process."""
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            yield client


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def files(tmp_path: Path, issuer: OidcProvider) -> BrokerFiles:
    """The default broker config (client_secret_basic) against the session issuer."""
    return write_config(tmp_path, issuer)
