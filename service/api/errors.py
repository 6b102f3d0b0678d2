"""The one map from errors to responses: ``render``; no stack trace ever reaches a caller."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service.api.schemas import TOKEN_BODY_HINTS, TokenBody
from service.config.load import WORDING, wording
from service.errors import (
    AccessDenied,
    BrokerError,
    InvalidClient,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
)
from service.observe import metrics

log = logging.getLogger("token_broker.api")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

__all__ = ["NO_STORE", "describe_validation", "install", "render", "validation_error"]


def render(exc: BrokerError) -> Response:
    """The response for ``exc``: its status, RFC 6749 body and headers, never cached."""
    return Response(
        content=orjson.dumps(exc.body()),
        status_code=exc.status,
        media_type="application/json",
        headers={**NO_STORE, **exc.headers()},
    )


def _from_http(exc: HTTPException) -> BrokerError:
    """Starlette's own refusals (no such route, wrong method) as errors of the tree."""
    detail = str(exc.detail)
    if exc.status_code == 404:  # noqa: PLR2004
        return NotFound(detail)
    if exc.status_code == 405:  # noqa: PLR2004
        return MethodNotAllowed(detail, (exc.headers or {}).get("Allow"))
    if exc.status_code == 401:  # noqa: PLR2004
        return InvalidClient(detail)
    if exc.status_code == 403:  # noqa: PLR2004
        return AccessDenied(detail)
    # A status the tree has no class for keeps its status, as an invalid_request.
    other = InvalidRequest(detail)
    other.status = exc.status_code
    return other


_WORDING = {**WORDING, "model_type": "expected a JSON object"}
# Bodies whose unknown fields are answered with the fields they accept, by model name.
_ACCEPTED = {TokenBody.__name__: tuple(TokenBody.model_fields)}
_HINTS = {TokenBody.__name__: TOKEN_BODY_HINTS}


def describe_validation(exc: ValidationError | RequestValidationError) -> str:
    """Field paths, reasons and expected forms, never the offending input (may be a secret)."""
    title = exc.title if isinstance(exc, ValidationError) else ""
    hints = _HINTS.get(title, {})
    parts: dict[str, str] = {}  # by field: a union's failing branches make one reason
    for err in exc.errors()[:8]:
        path = [p for p in err["loc"] if p != "body"]
        if err["type"] == "extra_forbidden":
            # The field's name is caller input: name what is accepted instead.
            accepted = _ACCEPTED.get(title)
            listed = f"; accepted fields: {', '.join(accepted)}" if accepted else ""
            parts.setdefault("<unknown>", f"unknown field{listed}")
            continue
        field = str(path[0]) if path else ""
        hint = hints.get(field)
        if hint is not None and err["type"] not in {"missing", "value_error"}:
            parts.setdefault(field, f"{field}: expected {hint}")
            continue
        if len(path) > 1 and path[0] == "labels":
            path = ["labels", "<label>"]  # label keys are caller input
        loc = ".".join(str(p) for p in path) or "body"
        parts.setdefault(loc, f"{loc}: {wording(err, _WORDING)}")
    return "; ".join(list(parts.values())[:5]) or "invalid request"


def validation_error(exc: ValidationError) -> InvalidRequest:
    """A pydantic failure as an ``invalid_request``."""
    return InvalidRequest(describe_validation(exc))


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def on_broker_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, BrokerError)
        return render(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return render(InvalidRequest(describe_validation(exc)))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return render(_from_http(exc))

    async def on_disconnect(_: Request, exc: Exception) -> Response:
        # A client that hangs up mid-body is the client's business, and a flood of them must
        # not flood the error log: counted, logged at debug, and nobody is left to answer.
        assert isinstance(exc, ClientDisconnect)
        metrics.client_disconnects.inc()
        log.debug("client disconnected before its request body arrived")
        return render(InvalidRequest("request body incomplete"))

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.error("unhandled error", extra={"error": type(exc).__name__})
        return render(BrokerError("internal error"))

    app.add_exception_handler(BrokerError, on_broker_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
