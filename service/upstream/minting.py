"""Tokens the broker signs itself: one per run, for the grant's principal, RS256 only.

OpenMetadata accepts any RS256 JWT whose ``kid`` it finds in the JWKS of one of its
``publicKeyUrls`` and never checks ``iss`` or ``aud`` (``JwtFilter``), so the broker can be an
issuer OpenMetadata trusts. Keys are RSA (OpenMetadata verifies RSA only), 2048 bits or more;
the first key signs and every key is published, which is what makes rotation gapless.

Pure functions over key material already read: no file, network or clock of their own.
Claims never carry ``isBot``: a bot token must equal the bot's stored token in OpenMetadata,
and a minted token is never that.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt
from joserfc.jwk import RSAKey

from service.models import IssuedToken

__all__ = [
    "ALGORITHM",
    "MIN_RSA_BITS",
    "MintRequest",
    "SigningKey",
    "load_signing_key",
    "mint",
    "public_jwks",
]

ALGORITHM = "RS256"
MIN_RSA_BITS = 2048
# Labels ride in the token so OpenMetadata's change history ties it to a run: bounded, since
# the whole JWT travels in every request header.
MAX_LABELS = 16
MAX_LABEL_CHARS = 256
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private RSA key and its ``kid``."""

    kid: str
    key: RSAKey

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"  # never the key material


def load_signing_key(pem: str | bytes, kid: str) -> SigningKey:
    """Parse a PEM private key; ``ValueError`` (never quoting the PEM) when it cannot sign."""
    if not _KID.fullmatch(kid):
        raise ValueError("kid must be 1 to 64 letters, digits, '.', '_' or '-'")
    material = pem.encode() if isinstance(pem, str) else pem
    # Checked with cryptography first: joserfc warns about (rather than refuses) short keys.
    try:
        private = load_pem_private_key(material, password=None)
    except (ValueError, TypeError):
        if b"PUBLIC KEY" in material:
            raise ValueError("a public key cannot sign: give the private key") from None
        raise ValueError(
            "not a PEM RSA private key (token-broker new-signing-key makes one)"
        ) from None
    if not isinstance(private, rsa.RSAPrivateKey):  # EC keys: OpenMetadata verifies RSA only
        msg = "not a PEM RSA private key (token-broker new-signing-key makes one)"
        raise ValueError(msg)  # noqa: TRY004 - a configuration value, reported like the others
    if private.key_size < MIN_RSA_BITS:
        raise ValueError(
            f"RSA key of {private.key_size} bits; at least {MIN_RSA_BITS} are required"
        )
    key = RSAKey.import_key(material)
    return SigningKey(kid, key)


def public_jwks(keys: Sequence[SigningKey]) -> dict[str, Any]:
    """The JWK set OpenMetadata fetches: public parts only, each with kid, alg and use."""
    published = []
    for signing in keys:
        public = signing.key.as_dict(private=False)
        published.append(
            {
                "kty": "RSA",
                "n": public["n"],
                "e": public["e"],
                "kid": signing.kid,
                "alg": ALGORITHM,
                "use": "sig",
            }
        )
    return {"keys": published}


@dataclass(frozen=True, slots=True)
class MintRequest:
    """What one minted token says: who, for how long, for which run."""

    issuer: str
    principal: str
    lifetime: float
    email: str | None = None
    audience: str | None = None
    scopes: tuple[str, ...] = ()
    labels: Mapping[str, str] | None = None


def mint(signing: SigningKey, request: MintRequest, *, now: float) -> IssuedToken:
    """A freshly signed JWT for ``request``, issued at ``now``, with a new ``jti``."""
    if request.lifetime <= 0:
        raise ValueError("a minted token needs a positive lifetime")
    issued_at = int(now)
    expires_at = issued_at + max(1, round(request.lifetime))
    claims: dict[str, Any] = {
        "iss": request.issuer,
        "sub": request.principal,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires_at,
        "jti": secrets.token_urlsafe(18),
    }
    if request.email is not None:
        claims["email"] = request.email
    if request.audience is not None:
        claims["aud"] = request.audience
    if request.scopes:
        claims["scope"] = " ".join(request.scopes)
    if request.labels:
        claims["run"] = {
            name: value[:MAX_LABEL_CHARS]
            for name, value in sorted(request.labels.items())[:MAX_LABELS]
        }
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": signing.kid}
    token = jwt.encode(header, claims, signing.key, algorithms=[ALGORITHM])
    return IssuedToken(
        access_token=token,
        token_type="Bearer",  # noqa: S106 - the token type, not a password
        issued_at=float(issued_at),
        expires_at=float(expires_at),
        scope=" ".join(request.scopes),
    )


def key_fingerprint(signing: SigningKey) -> str:
    """SHA-256 prefix of the public key, for logs and check-config: never the key itself."""
    public = signing.key.as_dict(private=False)
    return hashlib.sha256(f"{public['n']}.{public['e']}".encode()).hexdigest()[:16]
