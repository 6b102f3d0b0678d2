"""The admin API for the secret team: look at profiles, drop cached tokens everywhere.

Only callers with the ``admin`` role get in (403 for everyone else); every call, allowed or
not, leaves an audit line. Nothing here ever shows a token or a secret: a cached token is
described by its scopes and expiry, a secret by where it lives and how old that file is.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service import audit, metrics
from service.api.errors import NO_STORE
from service.api.routes import ERROR_RESPONSES, bearer_caller, client_address, runtime
from service.config import Profile, SecretSource
from service.errors import AccessDenied, BrokerError
from service.models import Caller
from service.runtime import Runtime

router = APIRouter(prefix="/v1/profiles", tags=["admin"])

ADMIN = "admin"


def _require_admin(request: Request, caller: Caller, action: str, profile: str | None) -> None:
    if ADMIN not in caller.roles:
        audit.admin(action, caller=caller.name, profile=profile, outcome="denied",
                    client=client_address(request))  # fmt: skip
        raise AccessDenied(f"caller '{caller.name}' lacks the admin role")


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def _secret(source: SecretSource | None, now: float) -> dict[str, Any] | None:
    if source is None:
        return None
    age = None
    if source.file is not None:
        try:
            age = round(now - source.file.stat().st_mtime, 1)
        except OSError:
            age = None
    return {"source": source.describe(), "age_seconds": age}


async def _describe(rt: Runtime, profile: Profile) -> dict[str, Any]:
    now = rt.clock()
    breaker = rt.resilient.breaker(profile.name)
    last = rt.resilient.last_exchange.get(profile.name)
    cached = []
    for scopes, token in await rt.broker.cached(profile.name):
        if token is not None and token.remaining(now) > 0:
            cached.append(
                {
                    "scopes": list(scopes),
                    "expires_at": _iso(token.expires_at),
                    "expires_in": int(token.remaining(now)),
                }
            )
    spec = profile.spec
    return {
        "name": profile.name,
        "provider": spec.provider,
        "issuer": profile.issuer,
        "token_endpoint": spec.token_endpoint,
        "client_id": spec.client_id,
        "auth_method": spec.auth_method,
        "scopes": list(spec.scopes),
        "last_exchange": {"time": _iso(last[0]), "outcome": last[1]} if last else None,
        "consecutive_failures": breaker.failures,
        "circuit": breaker.state.name.lower(),
        "cached": cached,
        "secret": _secret(profile.private_key or profile.client_secret, time.time()),
    }


def _json(body: dict[str, Any]) -> Response:
    return Response(content=orjson.dumps(body), media_type="application/json", headers=NO_STORE)


@router.get("", responses=ERROR_RESPONSES)
async def list_profiles(
    request: Request, caller: Annotated[Caller, Depends(bearer_caller)]
) -> Response:
    """Every profile: issuer, auth method, last exchange, cached expiries, secret age."""
    _require_admin(request, caller, "list_profiles", None)
    rt = runtime(request)
    profiles = [await _describe(rt, p) for p in rt.config.profiles.values()]
    audit.admin("list_profiles", caller=caller.name, profile=None, outcome="ok",
                client=client_address(request))  # fmt: skip
    metrics.admin_actions.labels("list_profiles").inc()
    return _json({"profiles": profiles, "config_loaded_at": _iso(rt.generation.loaded_at)})


@router.post("/{name}/invalidate", responses=ERROR_RESPONSES)
async def invalidate(
    request: Request, name: str, caller: Annotated[Caller, Depends(bearer_caller)]
) -> Response:
    """Drop the profile's cached tokens in every replica; the next request asks the issuer."""
    rt = runtime(request)
    # Only a configured name reaches the audit line; anything else is caller input.
    known = name if name in rt.config.profiles else None
    _require_admin(request, caller, "invalidate", known)
    if known is None:
        audit.admin("invalidate", caller=caller.name, profile=None, outcome="unknown_profile",
                    client=client_address(request))  # fmt: skip
        return Response(
            content=orjson.dumps(
                {"error": "invalid_request", "error_description": "no such profile"}
            ),
            status_code=404,
            media_type="application/json",
            headers=NO_STORE,
        )
    try:
        await rt.broker.invalidate(known)
    except BrokerError as exc:
        audit.admin("invalidate", caller=caller.name, profile=known, outcome=exc.error,
                    client=client_address(request))  # fmt: skip
        raise
    audit.admin("invalidate", caller=caller.name, profile=known, outcome="ok",
                client=client_address(request))  # fmt: skip
    metrics.admin_actions.labels("invalidate").inc()
    return _json({"profile": known, "invalidated": True})
