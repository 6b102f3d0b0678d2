"""OpenID Connect discovery: the token endpoint of an issuer, cached until it fails."""

from __future__ import annotations

import asyncio

import httpx2

from service.errors import UpstreamError, UpstreamUnavailable
from service.upstream.providers.base import url_problem


class Discovery:
    """Fetches ``/.well-known/openid-configuration`` once per issuer; refetches after failure."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self._http = http
        self._endpoints: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def token_endpoint(self, issuer: str) -> str:
        """The issuer's ``token_endpoint``."""
        cached = self._endpoints.get(issuer)
        if cached is not None:
            return cached
        async with self._locks.setdefault(issuer, asyncio.Lock()):
            cached = self._endpoints.get(issuer)
            if cached is None:
                cached = await self._fetch(issuer)
                self._endpoints[issuer] = cached
            return cached

    def invalidate(self, issuer: str) -> None:
        """Forget the document so the next exchange rediscovers it."""
        self._endpoints.pop(issuer, None)

    async def _fetch(self, issuer: str) -> str:
        url = f"{issuer}/.well-known/openid-configuration"
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable(f"issuer discovery failed: {type(exc).__name__}") from None
        if response.status_code >= 500:  # noqa: PLR2004
            raise UpstreamUnavailable(f"issuer discovery answered HTTP {response.status_code}")
        if response.status_code != 200:  # noqa: PLR2004
            raise UpstreamError(f"issuer discovery answered HTTP {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise UpstreamError("issuer discovery document is not JSON") from None
        if not isinstance(document, dict):
            raise UpstreamError("issuer discovery document is not a JSON object")
        # OIDC Discovery section 4.3: the document must name the issuer we asked.
        if str(document.get("issuer", "")).rstrip("/") != issuer:
            raise UpstreamError("issuer discovery document names a different issuer")
        endpoint = document.get("token_endpoint")
        if not isinstance(endpoint, str) or url_problem(endpoint):
            raise UpstreamError("issuer discovery document has no usable token_endpoint")
        return endpoint
