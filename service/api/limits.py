"""Request size limits as plain ASGI middleware (no body buffering, no extra layers)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import RequestTooLarge


class RequestLimits:
    """Refuse oversized requests before any route runs.

    Headers: more than ``max_headers`` of them or ``max_header_bytes`` in all is a 431.
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
        if len(headers) > self.max_headers or (
            sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes
        ):
            response = error_response(
                431,
                "invalid_request",
                f"request headers over {self.max_headers} fields or {self.max_header_bytes} bytes",
            )
            await response(scope, receive, send)
            return
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit():
                    response = error_response(400, "invalid_request", "malformed Content-Length")
                    await response(scope, receive, send)
                    return
                if int(value) > self.max_bytes:
                    response = error_response(
                        413, "invalid_request", f"request body over {self.max_bytes} bytes"
                    )
                    await response(scope, receive, send)
                    return
                break
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
