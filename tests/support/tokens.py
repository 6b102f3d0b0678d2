# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""JWT helpers for tests: private_key_jwt client assertions and access-token verification."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

__all__ = ["make_client_assertion", "verify_access_token"]


def make_client_assertion(
    *,
    client_id: str,
    audience: str,
    private_key_pem: Path | bytes,
    kid: str | None = None,
    lifetime: int = 60,
    alg: str = "RS256",
) -> str:
    """A private_key_jwt client assertion (RFC 7523): iss = sub = client_id, aud = audience."""
    pem = private_key_pem.read_bytes() if isinstance(private_key_pem, Path) else private_key_pem
    key = RSAKey.import_key(pem)
    now = int(time.time())
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "exp": now + lifetime,
    }
    return jwt.encode(header, claims, key, algorithms=[alg])


def verify_access_token(
    token: str, jwks: dict[str, Any], *, algorithms: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify ``token``'s signature against the JWK set ``jwks``; return (header, claims).

    Only the signature is checked (by default RS256 only); claim checks are the caller's.
    Raises joserfc's errors on a bad signature or an unknown ``kid``.
    """
    key_set = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    decoded = jwt.decode(token, key_set, algorithms=algorithms or ["RS256"])
    return dict(decoded.header), dict(decoded.claims)
