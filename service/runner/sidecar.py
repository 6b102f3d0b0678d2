"""Runner-side sidecar: keeps a fresh broker token in a file and on a loopback port.

``TokenKeeper`` owns the token: it fetches, refreshes ahead of expiry, backs off with full
jitter while the broker is down, writes the file atomically (0600) and drops the token (and
removes the file) the moment it no longer has ``min_ttl`` left, so nothing ever reads a token
that is about to expire. Time, sleep and randomness are injected, so the schedule is unit
tested without sleeping.

The HTTP side is ``asyncio.start_server`` with a deliberately minimal HTTP/1.1 parser rather
than uvicorn or a framework: it serves three tiny endpoints to processes in the same pod, one
request per connection; owning the loop means one event loop, one shutdown path and our own
signal handling shared with the refresher, strict size and time limits on every request, and
no web framework in the runner image. Anything the parser does not understand gets a 4xx
with an RFC 6749 error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ipaddress
import json
import logging
import math
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2

from service.observe.audit import fingerprint
from service.runner.client import (
    ClientError,
    FetchedToken,
    afetch_token,
    credential_from_env,
    write_private_file,
)

log = logging.getLogger("token_broker.sidecar")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# Asks the broker for a token that lives at least the given number of seconds.
Fetch = Callable[[int], Awaitable[FetchedToken]]

MAX_MARGIN_SECONDS = 5.0
MIN_REFRESH_INTERVAL = 1.0
MAX_REQUEST_BYTES = 16384
MAX_BODY_BYTES = 4096
MAX_HEADERS = 64
REQUEST_TIMEOUT_SECONDS = 10.0
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Held:
    """A token the keeper holds, with its expiry on the keeper's clock."""

    token: FetchedToken
    expires_at: float
    fingerprint: str

    @classmethod
    def of(cls, token: FetchedToken, asked_at: float) -> Held:
        """``token`` as answered to a request sent at ``asked_at`` (expiry errs early)."""
        return cls(token, asked_at + token.expires_in, fingerprint(token.access_token))

    @property
    def margin(self) -> float:
        """Never hand out the last seconds of a token: it may expire on its way to a server."""
        return min(MAX_MARGIN_SECONDS, self.token.expires_in / 10)

    def remaining(self, now: float) -> float:
        """Seconds of life left at ``now``."""
        return self.expires_at - now


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**(n-1)))``."""

    base: float = 1.0
    cap: float = 60.0
    floor: float = 0.1

    def delay(self, failures: int, rand: float, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (``rand`` in [0, 1))."""
        ceiling = min(self.cap, self.base * 2.0 ** min(max(failures - 1, 0), 30))
        wait = max(self.floor, rand * ceiling)
        if retry_after is not None:
            # The broker knows when asking again makes sense; still bounded by our cap.
            wait = max(wait, min(retry_after, self.cap))
        return wait


@dataclass
class TokenKeeper:
    """Holds at most one token with at least ``min_ttl`` left; see the module docstring."""

    fetch: Fetch
    min_ttl: int = 0
    path: Path | None = None
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    rand: Callable[[], float] = random.random
    backoff: Backoff = field(default_factory=Backoff)
    refresh_fraction: float = 2 / 3
    held: Held | None = None
    failures: int = 0
    next_fetch_at: float = -math.inf
    last_error: ClientError | None = None

    def usable_until(self, held: Held) -> float:
        """The moment ``held`` stops being served: ``min_ttl`` (or the margin) before expiry."""
        return held.expires_at - max(self.min_ttl, held.margin)

    def current(self) -> Held | None:
        """The held token if it may be handed out now, else None."""
        held = self.held
        if held is not None and self.clock() < self.usable_until(held):
            return held
        return None

    def retry_after(self) -> int:
        """Whole seconds until the keeper next asks the broker (at least 1)."""
        wait = self.next_fetch_at - self.clock()
        return max(1, math.ceil(wait)) if math.isfinite(wait) else 1

    async def refresh(self) -> bool:
        """Ask the broker once; on success hold and write the token, else schedule a retry."""
        held = self.current()
        # Asking for more life than the held token has left makes the broker hand out a newer
        # token rather than the one we hold from its cache; a broker whose policy caps
        # max_ttl below that refuses with 400, and then we ask for min_ttl alone.
        wanted = self.min_ttl
        if held is not None:
            wanted = max(wanted, math.ceil(held.remaining(self.clock())) + 1)
        asked_at = self.clock()
        try:
            try:
                token = await self.fetch(wanted)
            except ClientError as exc:
                if wanted == self.min_ttl or exc.status != http.HTTPStatus.BAD_REQUEST:
                    raise
                asked_at = self.clock()
                token = await self.fetch(self.min_ttl)
        except ClientError as exc:
            self._failed(exc)
            return False
        fresh = Held.of(token, asked_at)
        if self.clock() >= self.usable_until(fresh):
            self._failed(ClientError(f"broker handed out a token with less than {self.min_ttl} s"))
            return False
        if self.path is not None:
            try:
                await asyncio.to_thread(write_private_file, self.path, token.access_token)
            except OSError as exc:
                self._failed(ClientError(f"cannot write {self.path}: {exc.strerror}"))
                return False
        self._hold(fresh)
        return True

    def _hold(self, fresh: Held) -> None:
        now = self.clock()
        previous, self.held = self.held, fresh
        self.failures, self.last_error = 0, None
        # Refresh when refresh_fraction of the usable life is behind us: the rest is the
        # window in which the broker may be down without anyone noticing.
        usable = self.usable_until(fresh) - now
        self.next_fetch_at = now + max(MIN_REFRESH_INTERVAL, self.refresh_fraction * usable)
        log.info(
            "token held",
            extra={
                "event": "sidecar_token",
                "fingerprint": fresh.fingerprint,
                "renewed": previous is None or previous.fingerprint != fresh.fingerprint,
                "expires_in": fresh.token.expires_in,
                "source": fresh.token.source,
                "refresh_in": round(self.next_fetch_at - now, 1),
            },
        )

    def _failed(self, exc: ClientError) -> None:
        self.failures += 1
        self.last_error = exc
        delay = self.backoff.delay(self.failures, self.rand(), exc.retry_after)
        self.next_fetch_at = self.clock() + delay
        held = self.current()
        log.warning(
            "token refresh failed: %s",
            exc,
            extra={
                "event": "sidecar_refresh_failed",
                "status": exc.status,
                "failures": self.failures,
                "retry_in": round(delay, 2),
                "serving": held.fingerprint if held else None,
            },
        )

    def expire(self) -> None:
        """Drop a token that may no longer be handed out, and remove its file."""
        held = self.held
        if held is None or self.current() is not None:
            return
        self.held = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        log.warning(
            "token dropped: less than min_ttl left and no replacement yet",
            extra={"event": "sidecar_token_dropped", "fingerprint": held.fingerprint},
        )

    async def tick(self) -> float:
        """One step: drop an unusable token, refresh when due; seconds until the next step."""
        self.expire()
        if self.clock() >= self.next_fetch_at:
            await self.refresh()
            self.expire()
        wake = self.next_fetch_at
        if self.held is not None:
            wake = min(wake, self.usable_until(self.held))
        return max(0.0, wake - self.clock())

    async def run(self) -> None:
        """Keep a token for ever (cancel the task to stop)."""
        while True:
            await self.sleep(await self.tick())

    async def once(self, budget: float) -> bool:
        """Fetch and write one token, retrying transient failures for up to ``budget`` s.

        A definite refusal (401, 403, or 400 such as a min_ttl the issuer cannot satisfy)
        fails at once: asking again gives the same answer.
        """
        deadline = self.clock() + budget
        while True:
            if await self.refresh():
                return True
            error = self.last_error
            if error is None or not error.retryable or self.next_fetch_at > deadline:
                return False
            await self.sleep(max(0.0, self.next_fetch_at - self.clock()))


# -- HTTP --------------------------------------------------------------------------------------


class HttpError(Exception):
    """A request we answer with an RFC 6749 error body."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = dict(headers or {})


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


def _error(exc: HttpError) -> Response:
    return _json(
        exc.status, {"error": exc.error, "error_description": exc.description}, exc.headers
    )


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Parse one HTTP/1.x request; ``HttpError`` for anything malformed or too large."""
    try:
        line = await reader.readline()
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):  # noqa: PLR2004
            raise HttpError(400, "invalid_request", "malformed request line")
        headers = await _read_headers(reader, len(line))
    except ValueError:  # a line longer than the stream limit
        raise HttpError(431, "invalid_request", "request line or header too large") from None
    if "transfer-encoding" in headers:
        raise HttpError(411, "invalid_request", "send the body with Content-Length")
    length_text = headers.get("content-length", "0")
    if not _digits(length_text):
        raise HttpError(400, "invalid_request", "invalid Content-Length")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, "invalid_request", f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise HttpError(400, "invalid_request", "body shorter than Content-Length") from None
    url = urlsplit(parts[1])
    return Request(parts[0], url.path, url.query, headers, body)


async def _read_headers(reader: asyncio.StreamReader, total: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await reader.readline()
        total += len(line)
        if total > MAX_REQUEST_BYTES:
            raise HttpError(431, "invalid_request", "request headers too large")
        if line in {b"\r\n", b"\n"}:
            return headers
        if not line.endswith(b"\n"):
            raise HttpError(400, "invalid_request", "incomplete request")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "invalid_request", "malformed header line")
        headers[name.lower()] = value.strip()
    raise HttpError(431, "invalid_request", "too many request headers")


@dataclass
class SidecarApp:
    """Routes: ``GET /token``, ``POST /oauth2/token``, ``GET /healthz``."""

    keeper: TokenKeeper

    def respond(self, request: Request) -> Response:
        """The response to ``request``; bad input is a 4xx, never an exception."""
        try:
            return self._route(request)(request)
        except HttpError as exc:
            return _error(exc)

    def _route(self, request: Request) -> Callable[[Request], Response]:
        routes: dict[str, tuple[str, Callable[[Request], Response]]] = {
            "/token": ("GET", self._token),
            "/oauth2/token": ("POST", self._oauth2_token),
            "/healthz": ("GET", self._healthz),
        }
        if request.path not in routes:
            raise HttpError(404, "invalid_request", "no such endpoint")
        method, handler = routes[request.path]
        if request.method != method:
            raise HttpError(
                405, "invalid_request", f"use {method} {request.path}", {"Allow": method}
            )
        return handler

    def _held(self) -> Held:
        held = self.keeper.current()
        if held is None:
            raise HttpError(
                503,
                "temporarily_unavailable",
                "no token with enough remaining life; the sidecar is retrying the broker",
                {"Retry-After": str(self.keeper.retry_after())},
            )
        return held

    def _expires_in(self, held: Held) -> int:
        return max(0, int(held.remaining(self.keeper.clock())))

    def _token(self, request: Request) -> Response:
        query = _form(request.query.encode())
        fmt = query.get("format", "text")
        if fmt not in {"text", "json"}:
            raise HttpError(400, "invalid_request", "format is text or json")
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
            raise HttpError(400, "invalid_request", f"Content-Type must be {FORM}")
        form = _form(request.body)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise HttpError(400, "invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise HttpError(
                400, "unsupported_grant_type", "only grant_type=client_credentials is supported"
            )
        held = self._held()
        wanted = set(form.get("scope", "").split())
        if not wanted <= set(held.token.scope.split()):
            raise HttpError(400, "invalid_scope", "requested scope exceeds the sidecar's token")
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
            except HttpError as exc:
                response = _error(exc)
            except TimeoutError:
                response = _error(HttpError(408, "invalid_request", "request timed out"))
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
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)


def _digits(text: str) -> bool:
    # str.isdigit alone accepts characters such as superscripts that int() refuses.
    return text.isascii() and text.isdigit() and len(text) <= 10  # noqa: PLR2004


def _form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "invalid_request", "malformed form or query string") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        # RFC 6749 section 3.2: parameters must not be included more than once.
        if key in form:
            raise HttpError(400, "invalid_request", f"parameter '{key[:64]}' is repeated")
        form[key] = value
    return form


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
            with contextlib.suppress(TimeoutError):
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
    # One line per broker request from httpx2 adds nothing to our own "token held" lines.
    if log.getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with httpx2.AsyncClient() as client:

        async def fetch(wanted: int) -> FetchedToken:
            # The credential is read on every fetch: a projected token rotates under us.
            return await afetch_token(
                client,
                url,
                credential_from_env(),
                profile=profile,
                scopes=scopes,
                min_ttl=wanted,
                labels=labels,
                request_timeout=REQUEST_TIMEOUT_SECONDS,
            )

        keeper = TokenKeeper(
            fetch=fetch, min_ttl=min_ttl, path=path, backoff=Backoff(cap=max_backoff)
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
