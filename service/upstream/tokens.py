"""Validation of token endpoint responses: pure protocol logic, no I/O."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import orjson

from service.errors import UpstreamError
from service.models import IssuedToken


def token_from_response(
    raw: Mapping[str, object], *, now: float, requested_scopes: tuple[str, ...]
) -> IssuedToken:
    """An ``IssuedToken`` from a successful response, or ``UpstreamError`` saying what is wrong."""
    access_token = raw.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise UpstreamError("issuer response has no access_token")
    token_type = raw.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not token_type:
        raise UpstreamError("issuer response has an invalid token_type")
    if token_type.lower() == "bearer":
        token_type = "Bearer"  # noqa: S105 - a token type, not a secret
    expires_in = raw.get("expires_in")
    if expires_in is None:
        exp = jwt_expiry(access_token)
        if exp is None:
            raise UpstreamError("issuer response has neither expires_in nor a JWT exp claim")
        lifetime = exp - now
    else:
        lifetime = _seconds(expires_in)
    if lifetime <= 0:
        raise UpstreamError("issuer returned a token that is already expired")
    scope = raw.get("scope")
    if not isinstance(scope, str):
        scope = " ".join(requested_scopes)
    return IssuedToken(
        access_token=access_token,
        token_type=token_type,
        issued_at=now,
        expires_at=now + lifetime,
        scope=scope,
    )


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise UpstreamError("issuer response has a non-numeric expires_in")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().isdigit():
        return float(value.strip())
    raise UpstreamError("issuer response has a non-numeric expires_in")


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verification (we only schedule by it)."""
    parts = token.split(".")
    if len(parts) != 3:  # noqa: PLR2004 - header.payload.signature
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)
