"""What every endpoint shares: the runtime, the caller, its address, the hand-out, JSON replies."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Header, Request
from fastapi.responses import Response

from service.api.errors import NO_STORE
from service.core.handout import Handout
from service.errors import InvalidClient, InvalidGrant
from service.models import Caller
from service.observe import audit
from service.runtime import Runtime

__all__ = [
    "audit_refusal",
    "authenticate_bearer",
    "bearer_caller",
    "client_address",
    "handout",
    "json_response",
    "runtime",
    "throttle",
]


def runtime(request: Request) -> Runtime:
    """The process's runtime, built by the lifespan."""
    rt: Runtime = request.app.state.runtime
    return rt


def client_address(request: Request) -> str | None:
    """The peer address (or the one uvicorn took from trusted proxy headers)."""
    # What ``request.client.host`` reads, without building an Address on every hand-out.
    client = request.scope.get("client")
    return client[0] if client else None


def throttle(rt: Runtime, request: Request) -> None:
    """Refuse an address that failed authentication too often (429) before trying again."""
    rt.shared.auth_throttle.check(client_address(request))


async def audit_refusal(rt: Runtime, request: Request, exc: InvalidClient | InvalidGrant) -> None:
    """Count a failed authentication against the address and leave an audit line."""
    rt.shared.auth_throttle.failed(client_address(request))
    # The description names what was wrong (expired, wrong audience...), never the credential.
    await audit.record(
        "denied",
        caller=None,
        profile=None,
        reason=exc.error,
        detail=exc.description,
        client=client_address(request),
    )


async def bearer_caller(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="Bearer <API key or workload JWT>")
    ] = None,
) -> Caller:
    """Authenticate ``Authorization: Bearer <credential>``; every refusal is audited."""
    return await authenticate_bearer(runtime(request), request, authorization)


async def authenticate_bearer(rt: Runtime, request: Request, authorization: str | None) -> Caller:
    """:func:`bearer_caller` for a handler that already holds the runtime."""
    rt.shared.auth_throttle.check(client_address(request))
    try:
        return await rt.generation.callers.bearer(_bearer_credential(authorization))
    except InvalidClient as exc:
        await audit_refusal(rt, request, exc)
        raise


def _bearer_credential(authorization: str | None) -> str:
    if not authorization:
        raise InvalidClient("missing Authorization: Bearer credential")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise InvalidClient("expected Authorization: Bearer <credential>")
    return credential.strip()


def handout(rt: Runtime) -> Handout:
    """The hand-out use case of the configuration generation in force."""
    return rt.generation.handout


def json_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """``body`` as JSON, never cached."""
    return Response(
        content=orjson.dumps(body),
        media_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )
