"""Header limits: too many or too large (431), a singleton header twice or malformed (400)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import render
from service.errors import BrokerError, HeadersTooLarge, InvalidRequest

# Headers a request may carry once: a second credential, body type or length is refused.
_SINGLE = {
    b"authorization": "Authorization",
    b"content-type": "Content-Type",
    b"content-length": "Content-Length",
    b"host": "Host",
}


class HeaderLimits:
    """Refuse requests whose headers are over the limits or ambiguous, before any route runs.

    More than ``max_headers`` of them or ``max_header_bytes`` in all is a 431; two of a header
    that must appear once (Authorization, Content-Type, ...) or a Content-Length that is not a
    number is a 400.
    """

    def __init__(
        self, app: ASGIApp, *, max_header_bytes: int = 8192, max_headers: int = 64
    ) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through, or answer the refusal of the first problem found."""
        if scope["type"] == "http":
            problem = self._problem(scope["headers"])
            if problem is not None:
                await render(problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, headers: list[tuple[bytes, bytes]]) -> BrokerError | None:
        if len(headers) > self.max_headers or (
            sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes
        ):
            return HeadersTooLarge(
                f"request headers over {self.max_headers} fields or {self.max_header_bytes} bytes"
            )
        seen_once: set[bytes] = set()
        for name, value in headers:
            if name not in _SINGLE:
                continue
            if name in seen_once:
                # Two credentials (or two framings of one body) are never resolved by picking
                # one. The name comes from the fixed table above, never from the caller.
                return InvalidRequest(f"more than one {_SINGLE[name]} header")
            seen_once.add(name)
            if name == b"content-length" and not value.isdigit():
                return InvalidRequest("malformed Content-Length")
        return None
