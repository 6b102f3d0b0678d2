"""Public keys of trusted issuers: a JWKS file, a JWKS URL, or OIDC discovery.

Keys are cached per issuer for ``max_age`` seconds. A token naming an unknown ``kid`` makes
one refetch (an issuer rotated its keys), at most once per ``min_refresh_interval`` so that
tokens with made-up key ids cannot turn the broker into a load generator against the
issuer. When a refetch fails, the keys already held stay in use; when there are none, the
caller gets a 503, because its credential may be perfectly valid.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
import orjson
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from service.callers.jwt import PublicKey, key_matches
from service.config.validated import TrustedIssuer
from service.errors import InvalidClient, UpstreamUnavailable
from service.upstream.discovery import BadDiscoveryDocument, discovered_url, discovery_url

log = logging.getLogger("token_broker.callers")

MAX_JWKS_BYTES = 1_048_576


class JwksError(Exception):
    """A key set could not be fetched or read; the message names no secret."""


def parse_jwks(document: object) -> dict[str | None, PublicKey]:
    """Signature keys of a JWK set by ``kid``; symmetric, encryption and broken keys skipped."""
    keys_field = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys_field, list):
        raise JwksError("not a JWK set (no 'keys' list)")
    keys: dict[str | None, PublicKey] = {}
    for entry in keys_field:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        # Only the public members: a JWKS that leaks a private key must not make us sign.
        kty = entry.get("kty")
        try:
            if kty == "RSA":
                keys[entry.get("kid")] = RSAKey.import_key({k: entry[k] for k in ("kty", "n", "e")})
            elif kty == "EC":
                public = {k: entry[k] for k in ("kty", "crv", "x", "y")}
                keys[entry.get("kid")] = ECKey.import_key(public)
        except (JoseError, KeyError, TypeError, ValueError):
            log.warning("skipping an unreadable key in a JWK set", extra={"kty": str(kty)})
    return keys


@dataclass
class _IssuerKeys:
    keys: dict[str | None, PublicKey] = field(default_factory=dict)
    fetched_at: float | None = None
    attempted_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JwksKeySource:
    """Implements ``callers.jwt.KeySource`` over files and HTTP."""

    def __init__(
        self,
        issuers: Mapping[str, TrustedIssuer],
        *,
        timeout: float = 10.0,
        max_age: float = 600.0,
        min_refresh_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = timeout
        self._max_age = max_age
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._state = {name: _IssuerKeys() for name in issuers}
        self._http: dict[str, httpx2.AsyncClient] = {}
        for name, issuer in issuers.items():
            if issuer.jwks_file is None:
                verify: ssl.SSLContext | bool = True
                if issuer.ca_file is not None:
                    verify = ssl.create_default_context(cafile=str(issuer.ca_file))
                self._http[name] = httpx2.AsyncClient(timeout=timeout, verify=verify)

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        for client in self._http.values():
            await client.aclose()

    async def key(self, issuer: TrustedIssuer, kid: str | None, alg: str) -> PublicKey:
        """The key for ``kid``, refetching the set once when it is unknown."""
        state = self._state[issuer.name]
        now = self._clock()
        if state.fetched_at is None or now - state.fetched_at > self._max_age:
            await self._refresh(issuer, state, force=False)
        found = self._pick(state, kid, alg)
        if found is None and self._may_refetch(state):
            await self._refresh(issuer, state, force=True)
            found = self._pick(state, kid, alg)
        if found is None:
            if not state.keys and state.fetched_at is None:
                raise UpstreamUnavailable(
                    f"keys of trusted issuer '{issuer.name}' are unavailable", retry_after=5
                )
            raise InvalidClient("workload token is signed by a key its issuer does not publish")
        return found

    def _may_refetch(self, state: _IssuerKeys) -> bool:
        return (
            state.attempted_at is None
            or self._clock() - state.attempted_at >= self._min_refresh_interval
        )

    @staticmethod
    def _pick(state: _IssuerKeys, kid: str | None, alg: str) -> PublicKey | None:
        if kid is not None:
            key = state.keys.get(kid)
            return key if key is not None and key_matches(key, alg) else None
        # Without a kid only an unambiguous key will do.
        fitting = [key for key in state.keys.values() if key_matches(key, alg)]
        return fitting[0] if len(fitting) == 1 else None

    async def _refresh(self, issuer: TrustedIssuer, state: _IssuerKeys, *, force: bool) -> None:
        attempted = state.attempted_at
        async with state.lock:
            if state.attempted_at != attempted:
                return  # another request refreshed while this one waited for the lock
            if not force and not self._may_refetch(state):
                return
            state.attempted_at = self._clock()
            try:
                keys = parse_jwks(await self._document(issuer))
            except JwksError as exc:
                log.warning(
                    "could not refresh a trusted issuer's keys; keeping the ones held",
                    extra={"issuer": issuer.name, "reason": str(exc), "held": len(state.keys)},
                )
                return
            state.keys = keys
            state.fetched_at = self._clock()
            log.info("trusted issuer keys loaded", extra={"issuer": issuer.name, "keys": len(keys)})

    async def _document(self, issuer: TrustedIssuer) -> object:
        if issuer.jwks_file is not None:
            try:
                raw = await asyncio.to_thread(issuer.jwks_file.read_bytes)
            except OSError as exc:
                raise JwksError(f"cannot read the JWKS file: {exc.strerror}") from None
            return _json(raw)
        url = issuer.jwks_url
        if url is None:
            document = await self._get(issuer, discovery_url(issuer.issuer))
            try:
                url = discovered_url(document, issuer.issuer, "jwks_uri")
            except BadDiscoveryDocument as exc:
                raise JwksError(f"discovery document {exc}") from None
        return await self._get(issuer, url)

    async def _get(self, issuer: TrustedIssuer, url: str) -> Any:
        try:
            response = await self._http[issuer.name].get(
                url, headers={"Accept": "application/json"}
            )
        except httpx2.HTTPError as exc:
            raise JwksError(f"request failed: {type(exc).__name__}") from None
        if response.status_code != 200:  # noqa: PLR2004
            raise JwksError(f"answered HTTP {response.status_code}")
        if len(response.content) > MAX_JWKS_BYTES:
            raise JwksError("answer is too large")
        return _json(response.content)


def _json(raw: bytes) -> object:
    if len(raw) > MAX_JWKS_BYTES:
        raise JwksError("document is too large")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise JwksError("document is not JSON") from None
