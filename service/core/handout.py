"""The hand-out use case: rate limit, policy, broker, then an audit line and metrics either way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol

from service.errors import BrokerError
from service.models import Caller, Grant, Issued, TokenRequest

__all__ = ["AuditTrail", "Handout", "Issuer", "Meter", "Policy", "RateLimit"]

# Stands in for anything a caller typed that the configuration does not know.
UNKNOWN = "(unknown)"


class RateLimit(Protocol):
    """Raises ``RateLimited`` when the caller is over its window."""

    async def check(self, caller: str) -> None: ...


class Policy(Protocol):
    """Turns a request into a grant, or raises ``AccessDenied``/``InvalidRequest``."""

    def decide(self, caller: Caller, request: TokenRequest) -> Grant: ...


class Issuer(Protocol):
    """The broker: a token for a grant, from cache or from the issuer."""

    async def issue(self, grant: Grant) -> Issued: ...


class AuditTrail(Protocol):
    """``service.observe.audit.record``, the fields the hand-out fills."""

    def __call__(
        self,
        outcome: str,
        *,
        caller: str | None,
        profile: str | None,
        credential: str | None = None,
        subject: str | None = None,
        scopes: tuple[str, ...] = (),
        reason: str | None = None,
        token: str | None = None,
        source: str | None = None,
        expires_in: int | None = None,
        labels: Mapping[str, str] | None = None,
        client: str | None = None,
    ) -> Awaitable[None]: ...


class Meter(Protocol):
    """The hand-out's metrics; label values are configured names or ``UNKNOWN`` only."""

    def handed_out(self, profile: str, outcome: str) -> None: ...

    def remaining_life(self, profile: str, seconds: float) -> None: ...


class Handout:
    """One caller's request for a token, refused or issued, and always accounted for.

    Built once per configuration generation (``runtime._generation``), so a reload never mixes
    an old policy with a new broker and a request only calls it.
    """

    __slots__ = ("_audit", "_broker", "_clock", "_known_scopes", "_meter", "_policy", "_rate")

    def __init__(
        self,
        *,
        rate_limit: RateLimit,
        policy: Policy,
        broker: Issuer,
        known_scopes: Callable[[str], Collection[str] | None],
        audit: AuditTrail,
        meter: Meter,
        clock: Callable[[], float],
    ) -> None:
        """``known_scopes(profile)`` is a configured profile's scopes, ``None`` if unknown."""
        self._rate = rate_limit
        self._policy = policy
        self._broker = broker
        self._known_scopes = known_scopes
        self._audit = audit
        self._meter = meter
        self._clock = clock

    async def issue(self, caller: Caller, request: TokenRequest, peer: str | None) -> Issued:
        """The token, or the ``BrokerError`` that refused it (audited and counted first)."""
        try:
            await self._rate.check(caller.name)
            grant = self._policy.decide(caller, request)
            issued = await self._broker.issue(grant)
        except BrokerError as exc:
            await self._refused(caller, request, peer, exc)
            raise
        remaining = issued.token.remaining(self._clock())
        # Awaited: a token the trail could not record is not handed out (503).
        await self._audit(
            "issued",
            caller=caller.name,
            credential=caller.credential,
            subject=caller.subject,
            profile=request.profile,
            scopes=grant.scopes,
            token=issued.token.access_token,
            source=issued.source,
            expires_in=int(remaining),
            labels=request.labels,
            client=peer,
        )
        self._meter.handed_out(grant.profile, "issued")
        self._meter.remaining_life(grant.profile, remaining)
        return issued

    async def _refused(
        self, caller: Caller, request: TokenRequest, peer: str | None, exc: BrokerError
    ) -> None:
        # Only configured names reach the log: a caller may paste anything into a request.
        known = self._known_scopes(request.profile)
        profile = request.profile if known is not None else UNKNOWN
        await self._audit(
            "denied",
            caller=caller.name,
            credential=caller.credential,
            subject=caller.subject,
            profile=profile,
            scopes=tuple(s if s in (known or ()) else UNKNOWN for s in request.scopes or ()),
            reason=exc.error,
            labels=request.labels,
            client=peer,
        )
        self._meter.handed_out(profile, "denied" if exc.status < 500 else "error")  # noqa: PLR2004
