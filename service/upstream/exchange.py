"""The client-credentials exchange (RFC 6749 section 4.4) through authlib."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey, RSAKey

from service.errors import UpstreamError, UpstreamUnavailable
from service.upstream.discovery import Discovery
from service.upstream.resilience import retry_after_seconds
from service.upstream.tokens import token_from_response

if TYPE_CHECKING:
    from service.config.validated import Profile
    from service.models import IssuedToken

log = logging.getLogger("token_broker.upstream")

# An issuer's error code is echoed to callers only when it looks like an RFC 6749 code.
_ERROR_CODE = re.compile(r"[a-z][a-z_]{0,39}")


class _IssuerBusy(Exception):
    """HTTP 429 or 5xx from the token endpoint, whatever its body: worth retrying."""

    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


def _raise_when_busy(response: httpx2.Response) -> httpx2.Response:
    # authlib would read a 429's JSON body as a refusal; a rate limit is an outage to wait out.
    if response.status_code == 429 or response.status_code >= 500:  # noqa: PLR2004
        raise _IssuerBusy(response.status_code, response.headers.get("retry-after"))
    return response


def _refused(exc: Exception, profile: str, _: float) -> UpstreamError:
    assert isinstance(exc, OAuthError)
    code = exc.error if _ERROR_CODE.fullmatch(str(exc.error)) else "unrecognised"
    return UpstreamError(
        f"issuer refused the exchange for profile '{profile}': {code}", issuer_error=code
    )


def _busy(exc: Exception, _: str, now: float) -> UpstreamError:
    assert isinstance(exc, _IssuerBusy)
    return UpstreamUnavailable(
        f"issuer answered HTTP {exc.status}", hint=retry_after_seconds(exc.retry_after, now=now)
    )


def _status(exc: Exception, _: str, __: float) -> UpstreamError:
    assert isinstance(exc, httpx2.HTTPStatusError)
    status = exc.response.status_code
    if status >= 500 or status == 429:  # noqa: PLR2004
        return UpstreamUnavailable(f"issuer answered HTTP {status}")
    return UpstreamError(f"issuer answered HTTP {status}")


def _unreachable(exc: Exception, _: str, __: float) -> UpstreamError:
    return UpstreamUnavailable(f"issuer unreachable: {type(exc).__name__}")


def _unusable(_: Exception, __: str, ___: float) -> UpstreamError:
    return UpstreamError("issuer returned an unusable token response")


# How an exchange's failure becomes a broker error, first match wins (HTTPStatusError before
# its base HTTPError): (exception class, whether the issuer may be unreachable, translation).
# Refusals (OAuthError) are 502s that are not retried; everything unreachable is a 503.
_FAILURES: tuple[
    tuple[type[Exception], bool, Callable[[Exception, str, float], UpstreamError]], ...
] = (
    (OAuthError, False, _refused),
    (_IssuerBusy, True, _busy),
    (httpx2.HTTPStatusError, True, _status),
    (httpx2.HTTPError, True, _unreachable),
    (ValueError, False, _unusable),
)
_CAUGHT = tuple(kind for kind, _, _ in _FAILURES)


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
        spec = self._profiles.get(profile)
        if spec is None:
            # A request that started before a reload removed its profile.
            raise UpstreamError(f"profile '{profile}' is no longer configured")
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
        except _CAUGHT as exc:
            raise self._failure(exc, spec) from None
        return token_from_response(raw, now=self._clock(), requested_scopes=scopes)

    def _failure(self, exc: Exception, profile: Profile) -> UpstreamError:
        """``exc`` as the broker error of the first row of ``_FAILURES`` that matches it."""
        for kind, unreachable, translate in _FAILURES:
            if isinstance(exc, kind):
                if unreachable:
                    # The issuer may have moved: discover its endpoint again next time.
                    self._forget_discovery(profile)
                return translate(exc, profile.name, self._clock())
        raise AssertionError(type(exc))  # _CAUGHT and _FAILURES list the same classes

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
            client.register_compliance_hook("access_token_response", _raise_when_busy)
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
