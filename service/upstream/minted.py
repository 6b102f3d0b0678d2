"""Hand-outs for ``provider: broker`` profiles: a freshly signed token each time, never cached.

Sits where the broker sits (the hand-out's ``Issuer``): minted profiles are signed here,
every other profile goes on to the exchanging broker, so policy, rate limit, audit and
metrics stay in ``core.handout`` for both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from service.errors import BrokerError
from service.models import Grant, Issued
from service.upstream.minting import MintRequest, SigningKey, mint

__all__ = ["MARGIN_SECONDS", "MintedProfile", "Minter"]

# A run asks for min_ttl seconds of life; the margin covers the time between the hand-out and
# the run's first request, and a little clock skew between the broker and OpenMetadata.
MARGIN_SECONDS = 300


class _Issuer(Protocol):
    async def issue(self, grant: Grant) -> Issued: ...


@dataclass(frozen=True, slots=True)
class MintedProfile:
    """What a broker profile adds to each token."""

    audience: str | None = None
    email_domain: str | None = None


class Minter:
    """Signs a new token per hand-out for minted profiles; passes the rest to ``fallback``."""

    __slots__ = ("_clock", "_fallback", "_issuer", "_key", "_profiles")

    def __init__(
        self,
        *,
        issuer: str,
        key: SigningKey,
        profiles: Mapping[str, MintedProfile],
        fallback: _Issuer,
        clock: Callable[[], float],
    ) -> None:
        """``key`` is the first configured key: the one that signs."""
        self._issuer = issuer
        self._key = key
        self._profiles = profiles
        self._fallback = fallback
        self._clock = clock

    async def issue(self, grant: Grant) -> Issued:
        """A minted token for a broker profile's grant, or the fallback's token."""
        profile = self._profiles.get(grant.profile)
        if profile is None:
            return await self._fallback.issue(grant)
        if grant.principal is None:  # the loader requires one: a bug if missing
            raise BrokerError("grant of a broker profile without a principal")
        # min_ttl + margin, capped by the grant: policy has already refused min_ttl > max_ttl.
        lifetime = grant.min_ttl + MARGIN_SECONDS
        if grant.max_ttl is not None:
            lifetime = min(lifetime, grant.max_ttl)
        email = f"{grant.principal}@{profile.email_domain}" if profile.email_domain else None
        request = MintRequest(
            issuer=self._issuer,
            principal=grant.principal,
            lifetime=max(lifetime, 1),
            email=email,
            audience=profile.audience,
            scopes=grant.scopes,
            labels=grant.labels,
        )
        return Issued(mint(self._key, request, now=self._clock()), "minted")
