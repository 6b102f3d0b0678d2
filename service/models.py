"""Frozen value types that flow through the broker, free of any framework."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated client of the broker.

    ``credential`` says how it proved who it is (``api_key``, or ``jwt:<trusted issuer>``)
    and ``subject`` which workload it was (the JWT ``sub``, plus the pod when there is one);
    both are for the audit trail, policy looks at ``name`` only.
    """

    name: str
    roles: frozenset[str] = frozenset()
    credential: str = "api_key"
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What a caller asks for; ``scopes`` of ``None`` (or empty) means all its grant allows."""

    profile: str
    scopes: tuple[str, ...] | None = None
    min_ttl: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Grant:
    """The outcome of policy: exactly what the broker will fetch for a caller."""

    caller: str
    profile: str
    scopes: tuple[str, ...]
    min_ttl: int = 0
    max_ttl: int | None = None
    # For minted tokens: who the token names, and the run it is for (ignored by exchanges).
    principal: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token from the issuer with the times the broker reasons about."""

    access_token: str
    token_type: str
    issued_at: float
    expires_at: float
    scope: str = ""

    @property
    def lifetime(self) -> float:
        """Seconds the issuer granted this token for."""
        return self.expires_at - self.issued_at

    def remaining(self, now: float) -> float:
        """Seconds of life left at ``now``."""
        return self.expires_at - now

    def refresh_at(self, fraction: float) -> float:
        """Wall-clock time after which a replacement should be fetched in the background."""
        return self.issued_at + self.lifetime * fraction

    def __repr__(self) -> str:
        # Tokens end up in tracebacks and debug output; keep the bytes out of both.
        return (
            f"IssuedToken(token_type={self.token_type!r}, issued_at={self.issued_at:.0f}, "
            f"expires_at={self.expires_at:.0f}, scope={self.scope!r})"
        )


@dataclass(frozen=True, slots=True)
class Issued:
    """A token handed out, and where it came from (``cache`` or ``issuer``)."""

    token: IssuedToken
    source: str
