"""The admin API for the secret team: look at profiles and policy, drop cached tokens everywhere.

Only callers with the ``admin`` role get in (403 for everyone else); every call, allowed or
not, leaves an audit line. Nothing here ever shows a token or a secret: a cached token is
described by its scopes, expiry and fingerprint, a secret by where it lives and how old that
file is, a caller by how it authenticates but never by its key hash.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from service.api.deps import bearer_caller, client_address, json_response, runtime
from service.api.schemas import ERROR_RESPONSES
from service.config.schema import CallerSpec
from service.config.secrets import SecretSource
from service.config.validated import BrokerConfig, Profile
from service.durations import parse_duration
from service.errors import AccessDenied, BrokerError, NotFound
from service.models import Caller
from service.observe import audit, metrics
from service.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["admin"])

ADMIN = "admin"


async def _require_admin(
    request: Request, caller: Caller, action: str, profile: str | None
) -> None:
    if ADMIN not in caller.roles:
        await audit.admin(action, caller=caller.name, profile=profile, outcome="denied",
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
    now = rt.shared.clock()
    breaker = rt.shared.resilient.breaker(profile.name)
    last = rt.shared.resilient.last_exchange.get(profile.name)
    cached = []
    for scopes, token in await rt.generation.broker.cached(profile.name):
        if token is not None and token.remaining(now) > 0:
            cached.append(
                {
                    "scopes": list(scopes),
                    "expires_at": _iso(token.expires_at),
                    "expires_in": int(token.remaining(now)),
                    # The audit log's fingerprint, so a cached token can be matched to its
                    # hand-outs without the token itself ever leaving the broker.
                    "fingerprint": audit.fingerprint(token.access_token),
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


@router.get("/profiles", responses=ERROR_RESPONSES)
async def list_profiles(
    request: Request, caller: Annotated[Caller, Depends(bearer_caller)]
) -> Response:
    """Every profile: issuer, auth method, last exchange, cached expiries, secret age."""
    await _require_admin(request, caller, "list_profiles", None)
    rt = runtime(request)
    profiles = [await _describe(rt, p) for p in rt.generation.config.profiles.values()]
    await audit.admin("list_profiles", caller=caller.name, profile=None, outcome="ok",
                client=client_address(request))  # fmt: skip
    metrics.admin_actions.labels("list_profiles").inc()
    return json_response({"profiles": profiles, "config_loaded_at": _iso(rt.generation.loaded_at)})


@router.post("/profiles/{name}/invalidate", responses=ERROR_RESPONSES)
async def invalidate(
    request: Request, name: str, caller: Annotated[Caller, Depends(bearer_caller)]
) -> Response:
    """Drop the profile's cached tokens in every replica; the next request asks the issuer."""
    rt = runtime(request)
    # Only a configured name reaches the audit line; anything else is caller input.
    known = name if name in rt.generation.config.profiles else None
    await _require_admin(request, caller, "invalidate", known)
    if known is None:
        await audit.admin("invalidate", caller=caller.name, profile=None,
                          outcome="unknown_profile", client=client_address(request))  # fmt: skip
        raise NotFound("no such profile")
    try:
        await rt.generation.broker.invalidate(known)
    except BrokerError as exc:
        await audit.admin("invalidate", caller=caller.name, profile=known, outcome=exc.error,
                    client=client_address(request))  # fmt: skip
        raise
    await audit.admin("invalidate", caller=caller.name, profile=known, outcome="ok",
                client=client_address(request))  # fmt: skip
    metrics.admin_actions.labels("invalidate").inc()
    return json_response({"profile": known, "invalidated": True})


def _credentials(spec: CallerSpec) -> list[dict[str, Any]]:
    """How a caller proves who it is; an API key is counted, its hash never shown."""
    found: list[dict[str, Any]] = []
    if spec.api_key_sha256 is not None:
        # Two keys while one is being rotated; the count says so without the hashes.
        keys = spec.api_key_sha256
        found.append({"kind": "api_key", "keys": len(keys) if isinstance(keys, list) else 1})
    if spec.kubernetes is not None:
        k8s = spec.kubernetes
        found.append(
            {
                "kind": "kubernetes",
                "namespace": k8s.namespace,
                "service_account": k8s.service_account,
                "pod": k8s.pod,
                "issuer": k8s.issuer,
            }
        )
    if spec.workload is not None:
        found.append(
            {
                "kind": "workload",
                "issuer": spec.workload.issuer,
                "subject": spec.workload.subject,
                "claims": dict(spec.workload.claims),
            }
        )
    return found


def _policy(
    config: BrokerConfig, name: str, spec: CallerSpec, profile: str | None
) -> dict[str, Any]:
    grants = []
    for grant in spec.grants:
        if profile is not None and grant.profile != profile:
            continue
        known = config.profiles.get(grant.profile)
        # No scopes in the grant means all of the profile's: show what the caller really gets.
        scopes = grant.scopes if grant.scopes is not None else (known.spec.scopes if known else [])
        grants.append(
            {
                "profile": grant.profile,
                "scopes": sorted(scopes),
                "max_ttl": None if grant.max_ttl is None else parse_duration(grant.max_ttl),
            }
        )
    return {
        "name": name,
        "credentials": _credentials(spec),
        "roles": sorted(spec.roles),
        "grants": grants,
    }


@router.get("/policy", responses=ERROR_RESPONSES)
async def policy(
    request: Request,
    caller: Annotated[Caller, Depends(bearer_caller)],
    profile: Annotated[str | None, Query(description="Only grants of this profile.")] = None,
    name: Annotated[str | None, Query(alias="caller", description="Only this caller.")] = None,
) -> Response:
    """Who may get what, from the loaded config: credentials, roles, grants; no key hashes."""
    # One generation for the whole answer, even if a reload lands meanwhile.
    generation = runtime(request).generation
    config = generation.config
    known_profile = profile if profile in config.profiles else None
    await _require_admin(request, caller, "policy", known_profile)
    unknown = None
    if profile is not None and known_profile is None:
        unknown = "unknown_profile"
    elif name is not None and name not in config.callers:
        unknown = "unknown_caller"
    if unknown is not None:
        await audit.admin("policy", caller=caller.name, profile=None, outcome=unknown,
                    client=client_address(request))  # fmt: skip
        # The name asked for is caller input: the body says only what kind of name it was.
        raise NotFound(f"no such {unknown.removeprefix('unknown_')}")
    callers = [
        _policy(config, caller_name, spec, known_profile)
        for caller_name, spec in config.callers.items()
        if name is None or caller_name == name
    ]
    if known_profile is not None:
        # Asked about one profile: only the callers that can reach it.
        callers = [entry for entry in callers if entry["grants"]]
    await audit.admin("policy", caller=caller.name, profile=known_profile, outcome="ok",
                client=client_address(request))  # fmt: skip
    metrics.admin_actions.labels("policy").inc()
    return json_response({"callers": callers, "config_loaded_at": _iso(generation.loaded_at)})
