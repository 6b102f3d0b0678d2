"""Who may get which token: pure code, deny by default.

A caller reaches a profile only through a grant naming it. Requested scopes must be a
subset of the grant's; no scopes requested means all of the grant's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from service.errors import AccessDenied, InvalidRequest, ScopeNotGranted
from service.models import Caller, Grant, TokenRequest


@dataclass(frozen=True, slots=True)
class GrantRule:
    """One entry of a caller's ``grants`` list, already validated against its profile."""

    profile: str
    scopes: frozenset[str]
    max_ttl: int | None = None
    # The profile's scopes: the only scope names a refusal may repeat back to the caller.
    # Anything else in a request is caller input (a pasted key, say) and is only counted.
    profile_scopes: frozenset[str] = frozenset()
    # Broker profiles only: the one principal every token of this grant names.
    principal: str | None = None


class Policy:
    """Decides every token request against the configured grants."""

    def __init__(self, rules: Mapping[str, Mapping[str, GrantRule]]) -> None:
        # caller name -> profile name -> rule; built once so a decision is two lookups.
        self._rules = rules

    def decide(self, caller: Caller, request: TokenRequest) -> Grant:
        """Return what ``caller`` may receive for ``request``, or raise why not."""
        rule = self._rules.get(caller.name, {}).get(request.profile)
        if rule is None:
            raise AccessDenied(f"caller '{caller.name}' has no grant for the requested profile")
        # Empty is treated as absent too: asking an issuer for no scope may get its defaults.
        if not request.scopes:
            scopes = _sorted(rule.scopes)
        else:
            if not rule.scopes.issuperset(request.scopes):
                extra = set(request.scopes) - rule.scopes
                raise ScopeNotGranted(_refusal(caller.name, extra, rule.profile_scopes))
            scopes = _sorted(request.scopes)
        if rule.max_ttl is not None and request.min_ttl > rule.max_ttl:
            raise InvalidRequest(
                f"min_ttl {request.min_ttl} s exceeds this grant's max_ttl {rule.max_ttl} s"
            )
        return Grant(
            caller=caller.name,
            profile=request.profile,
            scopes=scopes,
            min_ttl=request.min_ttl,
            max_ttl=rule.max_ttl,
            principal=rule.principal,
            labels=request.labels,
        )

    def rule(self, caller: str, profile: str) -> GrantRule | None:
        """The rule granting ``profile`` to ``caller``, if any."""
        return self._rules.get(caller, {}).get(profile)

    def profiles_for(self, caller: Caller) -> tuple[str, ...]:
        """Profiles the caller holds a grant for, in configuration order."""
        return tuple(self._rules.get(caller.name, {}))


@functools.lru_cache(maxsize=256)
def _sorted(scopes: tuple[str, ...] | frozenset[str]) -> tuple[str, ...]:
    # The same few scope sets come on every hand-out; the cache key wants them sorted.
    return tuple(sorted(set(scopes)))


def _refusal(caller: str, extra: set[str], known: frozenset[str]) -> str:
    """Why scopes were refused: configured scope names, and only a count of the others."""
    named = " ".join(sorted(extra & known))
    unknown = len(extra - known)
    others = f"{unknown} scope{'s' if unknown > 1 else ''} unknown to the profile"
    if not unknown:
        return f"scopes not granted to caller '{caller}': {named}"
    if not named:
        return f"scopes not granted to caller '{caller}': {others}"
    return f"scopes not granted to caller '{caller}': {named} (and {others})"
