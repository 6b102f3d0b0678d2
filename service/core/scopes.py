"""Requested scopes (RFC 6749 section 3.3), read the same way on every endpoint.

Blank means absent. A ``scope`` that is empty or only whitespace (any Unicode whitespace,
tabs and line breaks included), an empty list, or a list of blank entries all mean "the
grant's scopes": the broker never asks an issuer for no scope at all, because many issuers
then grant their default scopes, which can exceed what policy allows.

Pure functions; errors (400 ``invalid_request`` for the JSON list, 403 ``invalid_scope`` at the
OAuth2 facade, as before) never repeat the caller's text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from service.errors import InvalidRequest, ScopeNotGranted

__all__ = ["MAX_SCOPES", "SCOPE_TOKEN_PATTERN", "from_list", "from_text"]

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E ): printable ASCII without '"' and '\'.
SCOPE_TOKEN_PATTERN = r"^[\x21\x23-\x5B\x5D-\x7E]{1,128}$"  # noqa: S105 - a pattern
_SCOPE_TOKEN = re.compile(SCOPE_TOKEN_PATTERN)
MAX_SCOPES = 32
_MALFORMED = (
    "scope is malformed: scope tokens are 1 to 128 printable ASCII characters without quotes "
    "or backslashes, separated by spaces (RFC 6749 section 3.3)"
)


def from_text(value: str | None) -> tuple[str, ...] | None:
    """The tokens of a space-delimited ``scope`` parameter; ``None`` when absent or blank."""
    if value is None:
        return None
    # The facade answers a malformed scope as RFC 6749 section 5.2 does: invalid_scope.
    return _tokens(value.split(), ScopeNotGranted)


def from_list(values: Iterable[str] | None) -> tuple[str, ...] | None:
    """The tokens of a JSON ``scopes`` list; ``None`` when absent, empty or all blank.

    Each entry is one token: surrounding whitespace is dropped, inner whitespace is malformed
    (a list entry never smuggles in a second scope).
    """
    if values is None:
        return None
    return _from_entries(tuple(values))


@functools.lru_cache(maxsize=64)
def _from_entries(entries: tuple[str, ...]) -> tuple[str, ...] | None:
    # Runners send the same few lists on every hand-out; the memo is bounded, and a
    # malformed list raises each time (exceptions are not cached).
    return _tokens((entry.strip() for entry in entries), InvalidRequest)


def _tokens(
    candidates: Iterable[str], error: type[InvalidRequest | ScopeNotGranted]
) -> tuple[str, ...] | None:
    # dict.fromkeys: duplicates collapse, first-seen order kept.
    tokens = tuple(dict.fromkeys(token for token in candidates if token))
    if not tokens:
        return None
    if len(tokens) > MAX_SCOPES:
        raise error(f"at most {MAX_SCOPES} scopes may be requested")
    if not all(_SCOPE_TOKEN.fullmatch(token) for token in tokens):
        raise error(_MALFORMED)
    return tokens
