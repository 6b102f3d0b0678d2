"""The endpoints: parse and validate, authenticate, decide, issue, respond."""

from __future__ import annotations

import base64
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote_plus

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from service.api.errors import NO_STORE, broker_error_response, validation_error
from service.api.schemas import ErrorBody, OAuth2TokenResponse, TokenBody, TokenResponse
from service.callers.authenticator import JWT_BEARER_ASSERTION
from service.core import scopes
from service.durations import parse_duration
from service.errors import (
    BrokerError,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    UnsupportedGrantType,
)
from service.models import Caller, Issued, TokenRequest
from service.observe import audit, metrics
from service.runtime import Runtime

router = APIRouter()

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Malformed request (invalid_request, unsupported_grant_type).",
        401: "Caller not authenticated (invalid_client).",
        403: "Policy refused (unauthorized_client, invalid_scope).",
        413: "Request body too large.",
        429: "Too many requests from this caller or address; see Retry-After.",
        502: "The issuer refused the exchange.",
        503: "The issuer is unreachable and no cached token can stand in.",
    }.items()
}


_AUTHORIZATION_PARAMETER = {
    "name": "authorization",
    "in": "header",
    "required": False,
    "description": "Bearer <API key or workload JWT>",
    "schema": {"type": "string"},
}


def runtime(request: Request) -> Runtime:
    """The process's runtime, built by the lifespan."""
    rt: Runtime = request.app.state.runtime
    return rt


async def bearer_caller(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="Bearer <API key or workload JWT>")
    ] = None,
) -> Caller:
    """Authenticate ``Authorization: Bearer <credential>``; every refusal is audited."""
    rt = runtime(request)
    _throttle(rt, request)
    try:
        return await rt.callers.bearer(_bearer_credential(authorization))
    except InvalidClient as exc:
        _audit_refusal(rt, request, exc)
        raise


def _throttle(rt: Runtime, request: Request) -> None:
    rt.auth_throttle.check(client_address(request))


def _audit_refusal(rt: Runtime, request: Request, exc: InvalidClient | InvalidGrant) -> None:
    rt.auth_throttle.failed(client_address(request))
    # The description names what was wrong (expired, wrong audience...), never the credential.
    audit.record(
        "denied",
        caller=None,
        profile=None,
        reason=exc.error,
        detail=exc.description,
        client=client_address(request),
    )


def _bearer_credential(authorization: str | None) -> str:
    if not authorization:
        raise InvalidClient("missing Authorization: Bearer credential")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise InvalidClient("expected Authorization: Bearer <credential>")
    return credential.strip()


def client_address(request: Request) -> str | None:
    """The peer address (or the one uvicorn took from trusted proxy headers)."""
    return request.client.host if request.client else None


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=orjson.dumps(body),
        media_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


async def _issue(rt: Runtime, caller: Caller, request: TokenRequest, peer: str | None) -> Issued:
    try:
        await rt.rate_limit.check(caller.name)
        grant = rt.config.policy.decide(caller, request)
        issued = await rt.broker.issue(grant)
    except BrokerError as exc:
        # Only configured names reach the log: a caller may paste anything into a request.
        profile = rt.config.profiles.get(request.profile)
        known = set(profile.spec.scopes) if profile else set()
        audit.record(
            "denied",
            caller=caller.name,
            credential=caller.credential,
            subject=caller.subject,
            profile=profile.name if profile else "(unknown)",
            scopes=tuple(s if s in known else "(unknown)" for s in request.scopes or ()),
            reason=exc.error,
            labels=request.labels,
            client=peer,
        )
        outcome = "denied" if exc.status < 500 else "error"  # noqa: PLR2004
        metrics.labelled(
            metrics.handouts, profile.name if profile else metrics.UNKNOWN, outcome
        ).inc()
        raise
    audit.record(
        "issued",
        caller=caller.name,
        credential=caller.credential,
        subject=caller.subject,
        profile=request.profile,
        scopes=grant.scopes,
        token=issued.token.access_token,
        source=issued.source,
        expires_in=int(issued.token.remaining(rt.clock())),
        labels=request.labels,
        client=peer,
    )
    metrics.labelled(metrics.handouts, grant.profile, "issued").inc()
    metrics.labelled(metrics.remaining_life, grant.profile).observe(
        issued.token.remaining(rt.clock())
    )
    return issued


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
    # than the whole cache lookup (bench/README.md).
    caller = await bearer_caller(request, request.headers.get("authorization"))
    body = await parse_token_body(request)
    assert isinstance(body.min_ttl, int)
    token_request = TokenRequest(
        profile=body.profile,
        scopes=scopes.from_list(body.scopes),
        min_ttl=body.min_ttl,
        labels=body.labels,
    )
    rt = runtime(request)
    issued = await _issue(rt, caller, token_request, client_address(request))
    grant_max = rt.config.policy.rule(caller.name, body.profile)
    token = issued.token
    now = rt.clock()
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
    return _json(payload, {"Token-Broker-Source": issued.source})


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
    try:
        return await _oauth2_token(request)
    except InvalidClient as exc:
        # RFC 6749 section 5.2: OAuth2 clients authenticate with HTTP Basic here.
        exc.scheme = "Basic"
        return broker_error_response(exc)


async def _oauth2_token(request: Request) -> Response:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidRequest("Content-Type must be application/x-www-form-urlencoded")
    form = _parse_form(await request.body())
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
    issued = await _issue(rt, caller, token_request, client_address(request))
    token = issued.token
    return _json(
        {
            "access_token": token.access_token,
            "token_type": token.token_type,
            "expires_in": int(token.remaining(rt.clock())),
            "scope": token.scope,
        },
        {"Token-Broker-Source": issued.source},
    )


def _parse_form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("body is not application/x-www-form-urlencoded") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        # RFC 6749 section 3.2: parameters must not be included more than once. The name is
        # caller input, possibly unknown to the broker: never repeated back.
        if key in form:
            raise InvalidRequest("a form parameter is repeated (RFC 6749 section 3.2)")
        form[key] = value
    return form


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
    _throttle(rt, request)
    try:
        if "client_assertion" in form:
            return await rt.callers.client_assertion(
                form["client_assertion"], form.get("client_id")
            )
        client_id, secret = _client_secret(header, form)
        return rt.callers.client_secret(client_id, secret)
    except (InvalidClient, InvalidGrant) as exc:  # a replayed assertion is a failed auth too
        _audit_refusal(rt, request, exc)
        raise


def _client_secret(header: str | None, form: dict[str, str]) -> tuple[str, str]:
    if header is not None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise InvalidClient("use HTTP Basic or client_secret_post client authentication")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII header text
            raise InvalidClient("malformed Basic credentials") from None
        raw_id, sep, raw_secret = decoded.partition(":")
        if not sep:
            raise InvalidClient("malformed Basic credentials")
        # RFC 6749 section 2.3.1: both parts are form-urlencoded before Basic encoding.
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if form.get("client_id", client_id) != client_id:
            raise InvalidRequest("client_id in the body differs from the Basic credentials")
        return client_id, secret
    if "client_secret" in form:
        return form.get("client_id", ""), form["client_secret"]
    raise InvalidClient("client authentication required")


def _pick_profile(rt: Runtime, caller: Caller, target: str | None) -> str:
    # A profile the caller holds no grant for is returned as is: policy refuses it in
    # ``_issue``, which audits and counts the refusal like any other.
    granted = rt.config.policy.profiles_for(caller)
    if target is None:
        if len(granted) > 1:
            raise InvalidRequest("caller holds several grants; name one with resource=<profile>")
        return granted[0] if granted else ""
    if target in rt.config.profiles:
        return target
    for name in granted:
        spec = rt.config.profiles[name].spec
        if target in {spec.audience, spec.resource}:
            return name
    return target


@router.get("/healthz", responses={200: {"description": "The process is alive."}})
async def healthz() -> Response:
    """Liveness: no I/O."""
    return _json({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: ``ready``, or ``degraded`` while Redis is down (still serving, from memory)."""
    checks = await runtime(request).ready()
    status = "degraded" if "degraded" in checks.values() else "ready"
    return Response(
        content=orjson.dumps({"status": status, "checks": checks}),
        media_type="application/json",
        headers=NO_STORE,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics_text() -> Response:
    """Prometheus exposition; label values come from configuration only."""
    return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)
