"""``POST /v1/token``: the broker's own JSON endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service.api.deps import authenticate_bearer, client_address, json_response, runtime
from service.api.errors import validation_error
from service.api.schemas import ERROR_RESPONSES, TokenBody, TokenResponse
from service.core import scopes
from service.errors import InvalidRequest
from service.models import TokenRequest

router = APIRouter()

_AUTHORIZATION_PARAMETER = {
    "name": "authorization",
    "in": "header",
    "required": False,
    "description": "Bearer <API key or workload JWT>",
    "schema": {"type": "string"},
}


async def parse_token_body(request: Request) -> TokenBody:
    """The JSON body of ``POST /v1/token``, validated; 400 for anything else."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise InvalidRequest("Content-Type must be application/json")
    try:
        return TokenBody.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc) from None


@router.post(
    "/v1/token",
    response_model=TokenResponse,
    responses=ERROR_RESPONSES,
    openapi_extra={
        "parameters": [_AUTHORIZATION_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TokenBody.model_json_schema()}},
        },
    },
)
async def v1_token(request: Request) -> Response:
    """Hand the caller a token for one of its profiles."""
    # Authenticated here rather than through Depends: dependency solving cost more per request
    # than the whole cache lookup (bench/README.md). The runtime is looked up once: it sits
    # behind two attribute lookups that fail over to Starlette's State.__getattr__.
    rt = runtime(request)
    caller = await authenticate_bearer(rt, request, request.headers.get("authorization"))
    body = await parse_token_body(request)
    assert isinstance(body.min_ttl, int)
    token_request = TokenRequest(
        profile=body.profile,
        scopes=scopes.from_list(body.scopes),
        min_ttl=body.min_ttl,
        labels=body.labels,
    )
    generation = rt.generation
    issued = await generation.handout.issue(caller, token_request, client_address(request))
    grant_max = generation.config.policy.rule(caller.name, body.profile)
    token = issued.token
    now = rt.shared.clock()
    payload: dict[str, Any] = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": int(token.remaining(now)),
        "expires_at": int(token.expires_at),
        "scope": token.scope,
        "profile": body.profile,
    }
    if grant_max is not None and grant_max.max_ttl is not None:
        payload["max_ttl"] = grant_max.max_ttl
    return json_response(payload, {"Token-Broker-Source": issued.source})
