"""``/.well-known/jwks.json`` and ``/.well-known/openid-configuration``: the broker as an issuer.

Unauthenticated (OpenMetadata fetches the JWKS without credentials) and cheap: both bodies
are serialised once per configuration generation, at load. The issuer comes from
``signing.issuer`` only, never from a request header a client controls.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import runtime
from service.config.validated import Signing
from service.errors import NotFound

router = APIRouter()

# Short: OpenMetadata caches the JWKS, and a rotation waits for every cache to see a new key.
_CACHE = {"Cache-Control": "public, max-age=300"}


def _signing(request: Request) -> Signing:
    signing = runtime(request).generation.config.signing
    if signing is None:
        raise NotFound("this broker signs no tokens: no signing: section is configured")
    return signing


@router.get("/.well-known/jwks.json", include_in_schema=False)
async def jwks(request: Request) -> Response:
    """The public signing keys (n, e, kid, alg, use): every configured key, the signer first."""
    return Response(_signing(request).jwks, media_type="application/json", headers=_CACHE)


@router.get("/.well-known/openid-configuration", include_in_schema=False)
async def openid_configuration(request: Request) -> Response:
    """``issuer`` and ``jwks_uri`` for clients that discover keys from the issuer URL."""
    return Response(
        _signing(request).openid_configuration, media_type="application/json", headers=_CACHE
    )
