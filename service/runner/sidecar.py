"""Runner-side sidecar: serves the keeper's token on a loopback port, and runs the keeper.

The HTTP side is ``asyncio.start_server`` with a deliberately minimal HTTP/1.1 parser rather
than uvicorn or a framework: it serves three tiny endpoints to processes in the same pod, one
request per connection; owning the loop means one event loop, one shutdown path and our own
signal handling shared with the refresher, strict size and time limits on every request, and
no web framework in the runner image. Anything the parser does not understand gets a 4xx
with an RFC 6749 error body, rendered by the same ``OAuth2Error`` the broker uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ipaddress
import json
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .client import FetchedToken, afetch_token, credential_from_env
from .keeper import MIN_RETRY_DELAY, Backoff, Held, TokenKeeper
from .oauth2 import (
    INVALID_REQUEST,
    INVALID_SCOPE,
    TEMPORARILY_UNAVAILABLE,
    UNSUPPORTED_GRANT_TYPE,
    OAuth2Error,
    parse_form,
)

__all__ = [
    "MAX_BODY_BYTES",
    "Backoff",
    "ListenError",
    "Request",
    "Response",
    "SidecarApp",
    "TokenKeeper",
    "main",
    "parse_listen",
    "read_request",
    "serve",
]

log = logging.getLogger("token_broker.sidecar")

MAX_REQUEST_BYTES = 16384
MAX_BODY_BYTES = 4096
MAX_HEADERS = 64
REQUEST_TIMEOUT_SECONDS = 10.0
FORM = "application/x-www-form-urlencoded"


# -- HTTP --------------------------------------------------------------------------------------


def _refuse(
    status: int, error: str, description: str, headers: Mapping[str, str] | None = None
) -> OAuth2Error:
    return OAuth2Error(description, status=status, error=error, headers=headers)


@dataclass(frozen=True)
class Request:
    """The parts of an HTTP request the sidecar looks at."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    """A complete response."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The bytes on the wire (one response per connection)."""
        phrase = http.HTTPStatus(self.status).phrase
        lines = [
            f"HTTP/1.1 {self.status} {phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Pragma: no-cache",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _json(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, json.dumps(body).encode(), headers=headers or {})


def _error(exc: OAuth2Error) -> Response:
    return _json(exc.status, exc.body(), exc.headers())


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Parse one HTTP/1.x request; ``HttpError`` for anything malformed or too large."""
    try:
        line = await reader.readline()
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):  # noqa: PLR2004
            raise _refuse(400, INVALID_REQUEST, "malformed request line")
        headers = await _read_headers(reader, len(line))
    except ValueError:  # a line longer than the stream limit
        raise _refuse(431, INVALID_REQUEST, "request line or header too large") from None
    if "transfer-encoding" in headers:
        raise _refuse(411, INVALID_REQUEST, "send the body with Content-Length")
    length_text = headers.get("content-length", "0")
    if not _digits(length_text):
        raise _refuse(400, INVALID_REQUEST, "invalid Content-Length")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise _refuse(413, INVALID_REQUEST, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise _refuse(400, INVALID_REQUEST, "body shorter than Content-Length") from None
    url = urlsplit(parts[1])
    return Request(parts[0], url.path, url.query, headers, body)


async def _read_headers(reader: asyncio.StreamReader, total: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await reader.readline()
        total += len(line)
        if total > MAX_REQUEST_BYTES:
            raise _refuse(431, INVALID_REQUEST, "request headers too large")
        if line in {b"\r\n", b"\n"}:
            return headers
        if not line.endswith(b"\n"):
            raise _refuse(400, INVALID_REQUEST, "incomplete request")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise _refuse(400, INVALID_REQUEST, "malformed header line")
        headers[name.lower()] = value.strip()
    raise _refuse(431, INVALID_REQUEST, "too many request headers")


@dataclass
class SidecarApp:
    """Routes: ``GET /token``, ``POST /oauth2/token``, ``GET /healthz``."""

    keeper: TokenKeeper

    def respond(self, request: Request) -> Response:
        """The response to ``request``; bad input is a 4xx, never an exception."""
        try:
            return self._route(request)(request)
        except OAuth2Error as exc:
            return _error(exc)

    def _route(self, request: Request) -> Callable[[Request], Response]:
        routes: dict[str, tuple[str, Callable[[Request], Response]]] = {
            "/token": ("GET", self._token),
            "/oauth2/token": ("POST", self._oauth2_token),
            "/healthz": ("GET", self._healthz),
        }
        if request.path not in routes:
            raise _refuse(404, INVALID_REQUEST, "no such endpoint")
        method, handler = routes[request.path]
        if request.method != method:
            raise _refuse(405, INVALID_REQUEST, f"use {method} {request.path}", {"Allow": method})
        return handler

    def _held(self) -> Held:
        held = self.keeper.current()
        if held is None:
            raise _refuse(
                503,
                TEMPORARILY_UNAVAILABLE,
                "no token with enough remaining life; the sidecar is retrying the broker",
                {"Retry-After": str(self.keeper.retry_after())},
            )
        return held

    def _expires_in(self, held: Held) -> int:
        return max(0, int(held.remaining(self.keeper.clock())))

    def _token(self, request: Request) -> Response:
        query = parse_form(request.query.encode())
        fmt = query.get("format", "text")
        if fmt not in {"text", "json"}:
            raise _refuse(400, INVALID_REQUEST, "format is text or json")
        held = self._held()
        if fmt == "text":
            return Response(200, held.token.access_token.encode(), "text/plain; charset=utf-8")
        return _json(200, self._oauth2_body(held))

    def _oauth2_body(self, held: Held) -> dict[str, Any]:
        return {
            "access_token": held.token.access_token,
            "token_type": "Bearer",
            "expires_in": self._expires_in(held),
            "scope": held.token.scope,
        }

    def _oauth2_token(self, request: Request) -> Response:
        # client_id / client_secret (or Basic) are accepted and ignored: this port listens on
        # loopback inside the pod, so the pod's network namespace is the trust boundary; any
        # process that can reach it could read the token file as well. Legacy clients such as
        # OpenMetadata 1.2 custom-oidc insist on sending some secret, so any value works.
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != FORM:
            raise _refuse(400, INVALID_REQUEST, f"Content-Type must be {FORM}")
        form = parse_form(request.body)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise _refuse(400, INVALID_REQUEST, "grant_type is required")
        if grant_type != "client_credentials":
            raise _refuse(
                400, UNSUPPORTED_GRANT_TYPE, "only grant_type=client_credentials is supported"
            )
        held = self._held()
        wanted = set(form.get("scope", "").split())
        if not wanted <= set(held.token.scope.split()):
            raise _refuse(400, INVALID_SCOPE, "requested scope exceeds the sidecar's token")
        return _json(200, self._oauth2_body(held))

    def _healthz(self, request: Request) -> Response:
        del request
        held = self.keeper.current()
        if held is None:
            return _json(
                503,
                {"status": "no_token"},
                {"Retry-After": str(self.keeper.retry_after())},
            )
        return _json(200, {"status": "ok", "expires_in": self._expires_in(held)})

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one request on a connection, then close it."""
        try:
            try:
                request = await asyncio.wait_for(read_request(reader), REQUEST_TIMEOUT_SECONDS)
            except OAuth2Error as exc:
                response = _error(exc)
            except asyncio.TimeoutError:
                response = _error(_refuse(408, INVALID_REQUEST, "request timed out"))
            else:
                response = self.respond(request)
                log.debug(
                    "request",
                    extra={
                        "method": request.method,
                        "path": request.path[:64],
                        "status": response.status,
                    },
                )
            writer.write(response.encode())
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_SECONDS)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)


def _digits(text: str) -> bool:
    # str.isdigit alone accepts characters such as superscripts that int() refuses.
    return text.isascii() and text.isdigit() and len(text) <= 10  # noqa: PLR2004


class ListenError(Exception):
    """The loopback address could not be bound; the message is safe to print."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` on a loopback address; ``ValueError`` otherwise.

    Only loopback: the endpoints hand out a token without authentication of their own.
    """
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not _digits(port_text) or int(port_text) > 65535:  # noqa: PLR2004
        raise ValueError("--listen is HOST:PORT, e.g. 127.0.0.1:8099")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            "--listen must be a loopback address (127.0.0.1 or ::1): "
            "the token endpoints have no authentication of their own"
        )
    return host, int(port_text)


async def serve(keeper: TokenKeeper, listen: tuple[str, int] | None, stop: asyncio.Event) -> None:
    """Keep the token fresh and serve it on ``listen`` until ``stop`` is set."""
    server: asyncio.Server | None = None
    if listen is not None:
        app = SidecarApp(keeper)
        try:
            server = await asyncio.start_server(
                app.handle, listen[0], listen[1], limit=MAX_REQUEST_BYTES
            )
        except OSError as exc:
            raise ListenError(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror}") from None
        bound = server.sockets[0].getsockname()
        log.info(
            "listening", extra={"event": "sidecar_listening", "host": bound[0], "port": bound[1]}
        )
    refresher = asyncio.create_task(keeper.run(), name="token-keeper")
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({refresher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if refresher.done():
            refresher.result()  # the refresher never returns: re-raise what ended it
    finally:
        for task in (refresher, stopper):
            task.cancel()
        await asyncio.gather(refresher, stopper, return_exceptions=True)
        if server is not None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)


async def main(
    *,
    url: str,
    profile: str,
    scopes: list[str] | None,
    min_ttl: int,
    labels: Mapping[str, str],
    path: Path | None,
    listen: tuple[str, int] | None,
    once: bool,
    once_budget: float,
    max_backoff: float,
) -> int:
    """``token-broker sidecar``: the exit status (0 done or stopped, 1 no token for --once)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def fetch(wanted: int) -> FetchedToken:
        # The credential is read on every fetch: a projected token rotates under us.
        return await afetch_token(
            url,
            credential_from_env(),
            profile=profile,
            scopes=scopes,
            min_ttl=wanted,
            labels=labels,
            request_timeout=REQUEST_TIMEOUT_SECONDS,
        )

    keeper = TokenKeeper(
        fetch=fetch,
        min_ttl=min_ttl,
        path=path,
        backoff=Backoff(cap=max_backoff, floor=MIN_RETRY_DELAY),
    )
    if not once:
        await serve(keeper, listen, stop)
        log.info("stopped", extra={"event": "sidecar_stopped"})
        return 0
    attempt = asyncio.create_task(keeper.once(once_budget))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in (attempt, stopper):
        task.cancel()
    await asyncio.gather(attempt, stopper, return_exceptions=True)
    if attempt.cancelled() or not attempt.result():
        return 1
    return 0
