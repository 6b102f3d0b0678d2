"""One error tree for the whole broker.

Every error knows the OAuth2 (RFC 6749 section 5.2) ``error`` code and the HTTP status it
maps to, so the HTTP layer renders all of them through one function
(``service.api.errors.render``) and nothing else decides status codes::

    BrokerError                        500 server_error (never raised; renders the unexpected)
    ├── InvalidRequest                 400 invalid_request
    │   ├── UnsupportedGrantType       400 unsupported_grant_type
    │   ├── RequestTooLarge            413 invalid_request
    │   ├── HeadersTooLarge            431 invalid_request
    │   ├── NotFound                   404 invalid_request  (no such route, profile or caller)
    │   ├── MethodNotAllowed           405 invalid_request  (+ Allow)
    │   └── TokenLifetimeTooShort      400 invalid_request  (min_ttl beyond the issuer's tokens)
    ├── InvalidClient                  401 invalid_client   (+ WWW-Authenticate)
    ├── InvalidGrant                   400 invalid_grant    (a replayed RFC 7523 assertion)
    ├── AccessDenied                   403 unauthorized_client (no grant for the profile)
    │   └── ScopeNotGranted            403 invalid_scope
    ├── RateLimited                    429 temporarily_unavailable (+ Retry-After)
    ├── CacheUnavailable               503 temporarily_unavailable (an admin action or a full
    │                                      replay store needs Redis)
    ├── AuditUnavailable               503 temporarily_unavailable (+ Retry-After; the audit
    │                                      trail cannot take the line: refused, not unaudited)
    ├── UpstreamError                  502 server_error     (the issuer refused or answered badly)
    │   └── UpstreamUnavailable        503 temporarily_unavailable (+ Retry-After; also an
    │                                      issuer budget spent)
    └── ConfigError                    raised at start-up only; lists every problem

Descriptions are written for the caller: they never contain a secret, a key or a token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.runner.oauth2 import OAuth2Error


class BrokerError(OAuth2Error):
    """Base of every error the broker raises on purpose.

    An ``OAuth2Error`` (service/runner/oauth2.py), the base the sidecar raises too: one
    tree, and one ``body()`` and ``headers()`` rendering on both sides.
    """

    error = "server_error"
    status = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)


class InvalidRequest(BrokerError):
    """The request is malformed: bad JSON, unknown field, bad value."""

    error = "invalid_request"
    status = 400


class UnsupportedGrantType(InvalidRequest):
    """The OAuth2 facade only speaks client_credentials."""

    error = "unsupported_grant_type"


class RequestTooLarge(InvalidRequest):
    """The body or a header is beyond the configured limit."""

    status = 413


class HeadersTooLarge(InvalidRequest):
    """More request headers, or more header bytes, than the configured limit."""

    status = 431


class NotFound(InvalidRequest):
    """No such route, or no such name in an admin query; the name itself is never repeated."""

    status = 404


class MethodNotAllowed(InvalidRequest):
    """The route exists, the method does not."""

    status = 405

    def __init__(self, description: str, allow: str | None = None) -> None:
        super().__init__(description)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        """RFC 9110 section 15.5.6: a 405 lists the methods that would work."""
        return {"Allow": self.allow} if self.allow else {}


class TokenLifetimeTooShort(InvalidRequest):
    """The caller asked for a token that outlives anything the issuer issues."""

    def __init__(self, profile: str, lifetime: float, min_ttl: float) -> None:
        super().__init__(
            f"profile '{profile}' issues tokens that live {int(lifetime)} s; "
            f"min_ttl {int(min_ttl)} s cannot be satisfied"
        )
        self.lifetime = lifetime


class InvalidClient(BrokerError):
    """The caller could not be authenticated."""

    error = "invalid_client"
    status = 401

    def __init__(self, description: str, scheme: str = "Bearer") -> None:
        super().__init__(description)
        self.scheme = scheme

    def headers(self) -> dict[str, str]:
        """RFC 6749 section 5.2 / RFC 6750 section 3: a 401 names the scheme to use."""
        return {"WWW-Authenticate": f'{self.scheme} realm="token-broker"'}


class InvalidGrant(BrokerError):
    """The presented grant is unusable: a client assertion already used, or without a ``jti``.

    Not an ``InvalidClient``: the assertion's signature and claims were good, so the answer is
    a 400 without ``WWW-Authenticate`` (asking for other credentials would not help).
    """

    error = "invalid_grant"
    status = 400


class AccessDenied(BrokerError):
    """The caller is known but policy grants it nothing for this request."""

    error = "unauthorized_client"
    status = 403


class ScopeNotGranted(AccessDenied):
    """The caller asked for scopes beyond its grant."""

    error = "invalid_scope"


class RateLimited(BrokerError):
    """Over a rate limit: per caller, or failed authentications per client address.

    RFC 6749 has no rate-limit code; ``temporarily_unavailable`` is its nearest meaning.
    """

    error = "temporarily_unavailable"
    status = 429

    def __init__(self, description: str, retry_after: float) -> None:
        super().__init__(description)
        self.retry_after = max(1, math.ceil(retry_after))

    def headers(self) -> dict[str, str]:
        """When the window ends."""
        return {"Retry-After": str(self.retry_after)}


class CacheUnavailable(BrokerError):
    """An operation that must reach every replica could not, because Redis is down.

    Also raised when Redis is down and the in-process store of used assertion ids is full:
    a new assertion cannot be recorded, and forgetting used ones would reopen replay.
    """

    error = "temporarily_unavailable"
    status = 503

    def headers(self) -> dict[str, str]:
        """Redis is probed every few seconds."""
        return {"Retry-After": "5"}


class AuditUnavailable(BrokerError):
    """The audit trail cannot take another line now: the hand-out is refused, not unaudited.

    Not an ``UpstreamUnavailable``: the issuer is fine, and nothing that handles issuer
    outages (serving a cached token instead, the circuit breaker) applies.
    """

    error = "temporarily_unavailable"
    status = 503

    def __init__(self) -> None:
        super().__init__("the audit trail is not keeping up; try again")
        self.retry_after = 1

    def headers(self) -> dict[str, str]:
        """The sink drains within milliseconds once its reader catches up."""
        return {"Retry-After": str(self.retry_after)}


class UpstreamError(BrokerError):
    """The issuer refused the exchange or answered with something unusable.

    ``issuer_error`` is the issuer's RFC 6749 error code when it sent one; such refusals are
    not retried (asking again with the same credentials gets the same answer).
    """

    error = "server_error"
    status = 502

    def __init__(self, description: str, *, issuer_error: str | None = None) -> None:
        super().__init__(description)
        self.issuer_error = issuer_error


class UpstreamUnavailable(UpstreamError):
    """The issuer could not be reached and no cached token can stand in.

    ``retry_after`` goes to the caller; ``hint`` is the issuer's own Retry-After, if any.
    """

    error = "temporarily_unavailable"
    status = 503

    def __init__(self, description: str, retry_after: int = 5, hint: float | None = None) -> None:
        super().__init__(description)
        self.retry_after = retry_after
        self.hint = hint

    def headers(self) -> dict[str, str]:
        """Tell well-behaved clients when to come back."""
        return {"Retry-After": str(self.retry_after)}


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason at once."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(f"{len(problems)} configuration problem(s)")
        self.problems = list(problems)
