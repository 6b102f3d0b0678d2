"""The client-credentials exchange (RFC 6749 section 4.4) through authlib."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey, RSAKey

from service.errors import UpstreamError, UpstreamUnavailable
from service.upstream.discovery import Discovery
from service.upstream.tokens import token_from_response

if TYPE_CHECKING:
    from service.config import Profile
    from service.models import IssuedToken

log = logging.getLogger("token_broker.upstream")


class UpstreamTokenSource:
    """Exchanges each profile's client credentials for tokens; one authlib client per profile."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._profiles = profiles
        self._timeout = timeout
        self._clock = clock
        self._http = httpx2.AsyncClient(timeout=timeout)
        self._discovery = Discovery(self._http)
        self._clients: dict[str, AsyncOAuth2Client] = {}

    async def aclose(self) -> None:
        """Close every connection pool."""
        for client in self._clients.values():
            await client.aclose()
        await self._http.aclose()

    async def fetch(self, profile: str, scopes: tuple[str, ...]) -> IssuedToken:
        """One exchange for ``profile``; errors say what failed, never with a secret."""
        spec = self._profiles[profile]
        endpoint = spec.spec.token_endpoint
        if endpoint is None:
            assert spec.issuer is not None  # config guarantees one of the two
            endpoint = await self._discovery.token_endpoint(spec.issuer)
        client = self._client(spec)
        try:
            client.client_secret = self._credential(spec)
        except (OSError, LookupError):
            raise UpstreamError(f"credential of profile '{profile}' is unavailable") from None
        params = spec.provider.token_params(spec.spec, scopes)
        log.debug("token exchange", extra={"profile": profile, "endpoint": endpoint})
        try:
            raw = await client.fetch_token(endpoint, grant_type="client_credentials", **params)
        except OAuthError as exc:
            raise UpstreamError(
                f"issuer refused the exchange for profile '{profile}': {exc.error}"
            ) from None
        except httpx2.HTTPStatusError as exc:
            self._forget_discovery(spec)
            status = exc.response.status_code
            if status >= 500 or status == 429:  # noqa: PLR2004
                raise UpstreamUnavailable(f"issuer answered HTTP {status}") from None
            raise UpstreamError(f"issuer answered HTTP {status}") from None
        except httpx2.HTTPError as exc:
            self._forget_discovery(spec)
            raise UpstreamUnavailable(f"issuer unreachable: {type(exc).__name__}") from None
        except ValueError:
            raise UpstreamError("issuer returned an unusable token response") from None
        return token_from_response(raw, now=self._clock(), requested_scopes=scopes)

    def _forget_discovery(self, profile: Profile) -> None:
        if profile.spec.token_endpoint is None and profile.issuer is not None:
            self._discovery.invalidate(profile.issuer)

    def _client(self, profile: Profile) -> AsyncOAuth2Client:
        client = self._clients.get(profile.name)
        if client is None:
            spec = profile.spec
            client = AsyncOAuth2Client(
                client_id=spec.client_id,
                token_endpoint_auth_method=spec.auth_method,
                timeout=self._timeout,
            )
            if spec.auth_method == "private_key_jwt":
                headers = {"kid": spec.key_id} if spec.key_id else None
                client.register_client_auth_method(
                    PrivateKeyJWT(headers=headers, alg=spec.signing_alg)
                )
            self._clients[profile.name] = client
        return client

    @staticmethod
    def _credential(profile: Profile) -> Any:
        # Read on every exchange: a rotated secret file is used without a restart.
        if profile.spec.auth_method == "private_key_jwt":
            assert profile.private_key is not None
            pem = profile.private_key.read()
            if profile.spec.signing_alg.startswith("ES"):
                return ECKey.import_key(pem)
            return RSAKey.import_key(pem)
        assert profile.client_secret is not None
        return profile.client_secret.read()
