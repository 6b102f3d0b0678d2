"""OpenID Connect discovery: one check of a discovery document, and token endpoints cached."""

from __future__ import annotations

import asyncio

import httpx2

from service.errors import UpstreamError, UpstreamUnavailable
from service.upstream.providers.base import url_problem

__all__ = ["BadDiscoveryDocument", "Discovery", "discovered_url", "discovery_url"]


class BadDiscoveryDocument(Exception):
    """Its text completes "discovery document ...", never quoting the document."""


def discovery_url(issuer: str) -> str:
    """Where ``issuer`` publishes its OpenID Connect discovery document."""
    return f"{issuer}/.well-known/openid-configuration"


def discovered_url(document: object, issuer: str, field: str) -> str:
    """The URL ``field`` of ``issuer``'s discovery document.

    Both sides that read discovery (the token endpoint here, trusted issuers' keys in
    ``callers.jwks``) check a document the same way through this function.
    """
    if not isinstance(document, dict):
        raise BadDiscoveryDocument("is not a JSON object")
    # OIDC Discovery section 4.3: the document must name the issuer we asked.
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        raise BadDiscoveryDocument("names a different issuer")
    url = document.get(field)
    if not isinstance(url, str) or url_problem(url):
        raise BadDiscoveryDocument(f"has no usable {field}")
    return url


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
        try:
            response = await self._http.get(
                discovery_url(issuer), headers={"Accept": "application/json"}
            )
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
        try:
            return discovered_url(document, issuer, "token_endpoint")
        except BadDiscoveryDocument as exc:
            raise UpstreamError(f"issuer discovery document {exc}") from None
