"""``POST /bench/bare``: what ``POST /v1/token`` costs with none of the broker's work.

Mounted only with ``TOKEN_BROKER_BENCH_ENDPOINTS=true`` (``make bench``), behind the same
middleware as every other route. It parses the request exactly as ``/v1/token`` does (body,
Content-Type check, ``TokenBody.model_validate_json``) and answers a JSON body of the same
keys and size with the same headers (no-store, ``Token-Broker-Source``, ``X-Request-ID``),
serialised the same way. No authentication, no policy, no cache, no audit line, no metrics:
the difference between the two endpoints is the price of a cached hand-out.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.errors import NO_STORE
from service.api.token import parse_token_body

router = APIRouter(prefix="/bench", include_in_schema=False)

# Length of the RS256 JWT the test issuer (tests/idp/oidc_provider.mjs) issues for
# scope=ingestion: 700 characters (693-714 for the other scope sets). bench/run.py checks that
# the two endpoints' response sizes agree.
BARE_TOKEN_LENGTH = 700
_TOKEN = "b" * BARE_TOKEN_LENGTH
_ALL_SCOPES = "ingestion read write"
_LIFETIME = 3600
_MAX_TTL = 4 * 3600
# As long as "cache", the value a cached hand-out carries.
_SOURCE = {"Token-Broker-Source": "bench"}


@router.post("/bare")
async def bare(request: Request) -> Response:
    """Parse like ``/v1/token``, answer a hand-out-shaped body without doing any of its work."""
    # The very function /v1/token parses with, so the comparison stays like for like.
    body = await parse_token_body(request)
    now = time.time()
    payload: dict[str, Any] = {
        "access_token": _TOKEN,
        "token_type": "Bearer",
        "expires_in": _LIFETIME,
        "expires_at": int(now) + _LIFETIME,
        "scope": " ".join(body.scopes) if body.scopes is not None else _ALL_SCOPES,
        "profile": body.profile,
        "max_ttl": _MAX_TTL,
    }
    return Response(
        content=orjson.dumps(payload),
        media_type="application/json",
        headers={**NO_STORE, **_SOURCE},
    )
