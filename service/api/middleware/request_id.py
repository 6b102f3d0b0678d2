"""``X-Request-ID``: one id per request, in every log line and in the response."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observe.logs import REQUEST_ID

# A caller's X-Request-ID is kept only when it is short and plain: it goes into every log line.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


class RequestId:
    """Tag each request with the caller's id when it is plain, else a fresh one.

    Outermost, so that even a refusal by the limits below carries the id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through, tagging HTTP requests and their responses."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        request_id = rid.decode() if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
        reset = REQUEST_ID.set(request_id)
        raw_id = request_id.encode()

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            REQUEST_ID.reset(reset)
