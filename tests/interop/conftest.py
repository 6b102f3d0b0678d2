"""Interop fixtures: the real ``metadata`` CLI, a broker subprocess, a fake OpenMetadata server.

Not part of ``make test`` (``norecursedirs`` in pyproject.toml); ``make interop`` or
``pytest tests/interop`` runs them. The ``metadata`` CLI lives in its own cached venv
(``.interop/venv``, see ``ensure_venv.py``), built here on first use when ``make interop``
has not built it already. The identity provider is the session oidc-provider of
``tests/conftest.py``; the broker is the same subprocess the integration tests run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.ensure_venv import ensure_venv, pinned_version
from tests.interop.om_server import FakeOpenMetadata
from tests.support import OidcProvider
from tests.support.broker_process import BrokerProcess, module_broker


@pytest.fixture(scope="session")
def metadata_cli() -> Path:
    """The pinned OpenMetadata ``metadata`` CLI (``.interop/venv``, built when out of date)."""
    return ensure_venv()


@pytest.fixture(scope="module")
def broker(
    oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker subprocess on the session oidc-provider; caller ``airflow`` may get 4 h tokens."""
    with module_broker(oidc_provider, tmp_path_factory.mktemp("interop-broker")) as proc:
        yield proc


@pytest.fixture(scope="module")
def om_server_module(oidc_provider: OidcProvider) -> Iterator[FakeOpenMetadata]:
    """The fake OpenMetadata server for this module, trusting the IdP's keys."""
    # The server version the CLI's version check accepts: the pinned client's x.y.z.
    version = ".".join(pinned_version().split(".")[:3])
    with FakeOpenMetadata(oidc_provider.jwks, version) as server:
        yield server


@pytest.fixture
def om_server(om_server_module: FakeOpenMetadata) -> FakeOpenMetadata:
    """The module's fake OpenMetadata server with no requests recorded yet."""
    om_server_module.reset()
    return om_server_module
