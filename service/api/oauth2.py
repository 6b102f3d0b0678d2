"""``POST /oauth2/token``: the RFC 6749 client-credentials facade and its client authentication."""

from __future__ import annotations

import base64
from urllib.parse import unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import (
    audit_refusal,
    client_address,
    handout,
    json_response,
    runtime,
    throttle,
)
from service.api.schemas import ERROR_RESPONSES, OAuth2TokenResponse
from service.callers.authenticator import JWT_BEARER_ASSERTION
from service.core import scopes
from service.durations import parse_duration
from service.errors import InvalidClient, InvalidGrant, InvalidRequest, UnsupportedGrantType
from service.models import Caller, TokenRequest
from service.runner.oauth2 import parse_form
from service.runtime import Runtime

router = APIRouter()

# RFC 6749 section 5.2: OAuth2 clients authenticate with HTTP Basic here, so every 401 of
# this endpoint names that scheme.
_SCHEME = "Basic"

_FORM_SCHEMA = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials"]},
        "client_id": {"type": "string"},
        "client_secret": {"type": "string"},
        "client_assertion_type": {"type": "string", "enum": [JWT_BEARER_ASSERTION]},
        "client_assertion": {"type": "string"},
        "scope": {"type": "string"},
        "resource": {"type": "string"},
        "audience": {"type": "string"},
        "min_ttl": {"type": "string"},
    },
}


@router.post(
    "/oauth2/token",
    response_model=OAuth2TokenResponse,
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA}},
        }
    },
)
async def oauth2_token(request: Request) -> Response:
    """RFC 6749 client-credentials facade.

    Client authentication: the caller name as client_id and its API key as secret (Basic or
    client_secret_post), or an RFC 7523 ``client_assertion`` carrying a workload JWT.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidRequest("Content-Type must be application/x-www-form-urlencoded")
    form = parse_form(await request.body(), InvalidRequest)
    rt = runtime(request)
    caller = await _client_auth(rt, request, form)
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required")
    if grant_type != "client_credentials":
        raise UnsupportedGrantType("only grant_type=client_credentials is supported")
    profile = _pick_profile(rt, caller, form.get("resource") or form.get("audience"))
    try:
        min_ttl = parse_duration(form.get("min_ttl", "0"))
    except ValueError as exc:
        raise InvalidRequest(f"min_ttl: {exc}") from None
    token_request = TokenRequest(
        profile=profile, scopes=scopes.from_text(form.get("scope")), min_ttl=min_ttl
    )
    issued = await handout(rt).issue(caller, token_request, client_address(request))
    token = issued.token
    return json_response(
        {
            "access_token": token.access_token,
            "token_type": token.token_type,
            "expires_in": int(token.remaining(rt.shared.clock())),
            "scope": token.scope,
        },
        {"Token-Broker-Source": issued.source},
    )


async def _client_auth(rt: Runtime, request: Request, form: dict[str, str]) -> Caller:
    header = request.headers.get("authorization")
    # An Authorization header counts even when empty: two credentials are never resolved by
    # picking one (RFC 6749 section 2.3: one authentication method per request).
    methods = [header is not None, "client_secret" in form, "client_assertion" in form]
    if sum(methods) > 1:
        raise InvalidRequest("use one client authentication method, not two")
    if ("client_assertion" in form) != ("client_assertion_type" in form) or (
        "client_assertion" in form and form["client_assertion_type"] != JWT_BEARER_ASSERTION
    ):
        raise InvalidRequest(
            f"client_assertion needs client_assertion_type={JWT_BEARER_ASSERTION}, and the "
            "other way round"
        )
    throttle(rt, request)
    try:
        if "client_assertion" in form:
            return await rt.generation.callers.client_assertion(
                form["client_assertion"], form.get("client_id")
            )
        client_id, secret = _client_secret(header, form)
        return rt.generation.callers.client_secret(client_id, secret)
    except InvalidClient as exc:
        await audit_refusal(rt, request, exc)
        if exc.scheme == _SCHEME:
            raise
        # The authenticator serves the Bearer endpoints too; this endpoint's 401 says Basic.
        raise InvalidClient(exc.description, scheme=_SCHEME) from None
    except InvalidGrant as exc:  # a replayed assertion is a failed auth too
        await audit_refusal(rt, request, exc)
        raise


def _client_secret(header: str | None, form: dict[str, str]) -> tuple[str, str]:
    if header is not None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise InvalidClient(
                "use HTTP Basic or client_secret_post client authentication", scheme=_SCHEME
            )
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII header text
            raise InvalidClient("malformed Basic credentials", scheme=_SCHEME) from None
        raw_id, sep, raw_secret = decoded.partition(":")
        if not sep:
            raise InvalidClient("malformed Basic credentials", scheme=_SCHEME)
        # RFC 6749 section 2.3.1: both parts are form-urlencoded before Basic encoding.
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if form.get("client_id", client_id) != client_id:
            raise InvalidRequest("client_id in the body differs from the Basic credentials")
        return client_id, secret
    if "client_secret" in form:
        return form.get("client_id", ""), form["client_secret"]
    raise InvalidClient("client authentication required", scheme=_SCHEME)


def _pick_profile(rt: Runtime, caller: Caller, target: str | None) -> str:
    # A profile the caller holds no grant for is returned as is: policy refuses it in the
    # hand-out, which audits and counts the refusal like any other.
    granted = rt.generation.config.policy.profiles_for(caller)
    if target is None:
        if len(granted) > 1:
            raise InvalidRequest("caller holds several grants; name one with resource=<profile>")
        return granted[0] if granted else ""
    if target in rt.generation.config.profiles:
        return target
    for name in granted:
        spec = rt.generation.config.profiles[name].spec
        if target in {spec.audience, spec.resource}:
            return name
    return target
