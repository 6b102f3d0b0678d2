"""Request ids and size limits as one plain ASGI middleware (no body buffering, no extra layers)."""

from __future__ import annotations

import re
import uuid

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import RequestTooLarge
from service.observe.logs import REQUEST_ID

# A caller's X-Request-ID is kept only when it is short and plain: it goes into every log line.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# Headers a request may carry once: a second credential, body type or length is refused.
_SINGLE = {
    b"authorization": "Authorization",
    b"content-type": "Content-Type",
    b"content-length": "Content-Length",
    b"host": "Host",
}


class RequestLimits:
    """Tag each request with an id (``X-Request-ID``, in logs and in the response) and refuse
    oversized requests before any route runs.

    Headers: more than ``max_headers`` of them or ``max_header_bytes`` in all is a 431; two of
    a header that must appear once (Authorization, Content-Type, ...) is a 400.
    Body: over ``max_bytes`` by ``Content-Length`` up front, else while reading, is a 413.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, max_header_bytes: int = 8192, max_headers: int = 64
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through, enforcing the limits on HTTP requests."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        rid = next((v for k, v in headers if k == b"x-request-id"), b"")
        request_id = rid.decode() if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
        reset = REQUEST_ID.set(request_id)
        raw_id = request_id.encode()

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            await send(message)

        try:
            await self._limited(scope, receive, tagged)
        finally:
            REQUEST_ID.reset(reset)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._header_problem(scope["headers"])
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestTooLarge(f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    def _header_problem(self, headers: list[tuple[bytes, bytes]]) -> Response | None:
        """The error response for headers over the limits or malformed, else ``None``."""
        if len(headers) > self.max_headers or (
            sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes
        ):
            return error_response(
                431,
                "invalid_request",
                f"request headers over {self.max_headers} fields or {self.max_header_bytes} bytes",
            )
        seen_once: set[bytes] = set()
        for name, value in headers:
            if name not in _SINGLE:
                continue
            if name in seen_once:
                # Two credentials (or two framings of one body) are never resolved by picking
                # one. The name comes from the fixed table above, never from the caller.
                return error_response(
                    400, "invalid_request", f"more than one {_SINGLE[name]} header"
                )
            seen_once.add(name)
            if name == b"content-length":
                if not value.isdigit():
                    return error_response(400, "invalid_request", "malformed Content-Length")
                if int(value) > self.max_bytes:
                    return error_response(
                        413, "invalid_request", f"request body over {self.max_bytes} bytes"
                    )
        return None
