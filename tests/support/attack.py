# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""The adversarial suite's tools: ``Attack`` sends hostile requests and checks the invariants."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from service.config.settings import Settings
from tests.support.broker import BrokerFiles
from tests.support.clock import FakeClock
from tests.support.processes import OidcProvider

__all__ = ["FORM", "OAUTH2", "V1", "Attack", "basic"]

V1 = "/v1/token"
OAUTH2 = "/oauth2/token"
FORM = "application/x-www-form-urlencoded"


def basic(caller: str, key: str) -> tuple[str, str]:
    """HTTP Basic client authentication (RFC 6749 section 2.3.1) for ``caller``."""
    encoded = base64.b64encode(f"{quote(caller)}:{quote(key)}".encode()).decode()
    return ("Authorization", f"Basic {encoded}")


@dataclass
class Attack:
    """A running broker and the invariants every hostile request is checked against."""

    client: httpx.AsyncClient
    files: BrokerFiles
    issuer: OidcProvider
    clock: FakeClock
    settings: Settings

    @property
    def issuer_calls(self) -> int:
        """Token requests that reached the issuer since the test began."""
        return self.issuer.proxy.token_requests

    def key(self, caller: str = "airflow") -> str:
        """The API key of ``caller`` in the default config."""
        return self.files.keys[caller]

    async def send(
        self,
        path: str,
        *,
        headers: Iterable[tuple[str, str | bytes]] = (),
        content: bytes | str | None = None,
        json: Any = None,
        echo: Iterable[str] = (),
    ) -> httpx.Response:
        """POST ``path``; fail the test on a 5xx, a non-RFC 6749 error body or an echo.

        ``headers`` is a list so that a test can repeat one; ``echo`` lists caller input that
        must not come back in the body or in any response header.
        """
        raw = [
            (name.encode(), value if isinstance(value, bytes) else value.encode("latin-1"))
            for name, value in headers
        ]
        response = await self.client.post(path, headers=raw, content=content, json=json)
        assert response.status_code < 500, (response.status_code, response.text)
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error", "error_description"}, body
            assert isinstance(body["error_description"], str)
        # X-Request-ID is a random hex id (or the caller's own plain id, returned by design):
        # short inputs such as "1e3" can occur in it by chance.
        answer = response.text + "\n".join(
            f"{k}: {v}" for k, v in response.headers.items() if k != "x-request-id"
        )
        for text in echo:
            assert text not in answer, f"caller input came back in a {response.status_code}"
        return response

    async def form(
        self,
        body: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        echo: Iterable[str] = (),
    ) -> httpx.Response:
        """POST a raw form body to ``/oauth2/token`` (Content-Type set unless given)."""
        sent = list(headers)
        if not any(name.lower() == "content-type" for name, _ in sent):
            sent.append(("Content-Type", FORM))
        return await self.send(OAUTH2, headers=sent, content=body, echo=echo)

    async def v1(
        self,
        body: Any,
        *,
        key: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        echo: Iterable[str] = (),
    ) -> httpx.Response:
        """POST JSON to ``/v1/token`` as ``key`` (airflow's by default)."""
        sent = [("Authorization", f"Bearer {key or self.key()}"), *headers]
        return await self.send(V1, headers=sent, json=body, echo=echo)
