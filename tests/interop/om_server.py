"""A loopback stand-in for the OpenMetadata server that records what the ``metadata`` CLI sends.

It authenticates like the real server does with ``authProvider: openmetadata`` behind OIDC
(``publicKeyUrls``): a request needs ``Authorization: Bearer <JWT>`` whose RS256 signature
verifies against the identity provider's JWK set (by ``kid``) and whose ``exp`` is in the
future; ``aud`` and ``iss`` are not checked (OpenMetadata does not check them either).
Anything else is a 401 with OpenMetadata's error shape.

Authenticated, it answers only what a workflow asks first: ``GET /api/v1/system/version``,
with the version the CLI is pinned to so its version check passes. Every other path is a
404, so a workflow stops right after its first entity lookup; that is enough, because the
tests are about the header, which the CLI sends on every request.

Each request is recorded with its request line, headers and the answer given, and (when a
process id is being watched) with a snapshot of that process's argv and environment taken
while the request was being served: the process that sent the header is then known to be
the one ``token-broker exec`` became.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from tests.support import free_port, verify_access_token

VERSION_PATH = "/api/v1/system/version"

Jwks = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class ProcessSnapshot:
    """A process's argv and environment (``/proc/<pid>``), as they were during a request."""

    pid: int
    argv: list[str]
    environ: dict[str, str] = field(repr=False)

    @classmethod
    def read(cls, pid: int) -> ProcessSnapshot | None:
        """Snapshot ``pid``; None when it is gone."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        environ = dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)
        return cls(pid, [arg.decode() for arg in argv if arg], environ)


@dataclass(frozen=True)
class SeenRequest:
    """One request as the fake server received and answered it."""

    request_line: str
    method: str
    path: str
    headers: list[tuple[str, str]] = field(repr=False)
    status: int
    process: ProcessSnapshot | None = field(repr=False)

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def bearer(self) -> str | None:
        """The token of the one ``Authorization: Bearer`` header, else None."""
        values = self.header("Authorization")
        if len(values) != 1:
            return None
        scheme, _, token = values[0].partition(" ")
        return token if scheme == "Bearer" and token else None


class FakeOpenMetadata:
    """The server on ``127.0.0.1:<port>``; ``api_url`` is what ``hostPort`` is set to."""

    def __init__(self, jwks: Jwks, version: str) -> None:
        self.jwks = jwks
        self.version = version
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self._lock = threading.Lock()
        self._requests: list[SeenRequest] = []
        self._watched: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-openmetadata", daemon=True
        )
        self._thread.start()

    @property
    def requests(self) -> list[SeenRequest]:
        """What was received so far, in order."""
        with self._lock:
            return list(self._requests)

    def watch(self, pid: int | None) -> None:
        """Snapshot process ``pid`` with every request from now on (None stops it)."""
        with self._lock:
            self._watched = pid

    def reset(self) -> None:
        """Forget the recorded requests and the watched process."""
        with self._lock:
            self._requests.clear()
            self._watched = None

    def authenticate(self, authorization: list[str]) -> bool:
        """What OpenMetadata's JWT filter accepts: one Bearer JWT, signed by the IdP, unexpired."""
        if len(authorization) != 1:
            return False
        scheme, _, token = authorization[0].partition(" ")
        if scheme != "Bearer" or not token:
            return False
        try:
            _, claims = verify_access_token(token, self.jwks())
        except Exception:
            return False
        exp = claims.get("exp")
        return isinstance(exp, int) and exp > time.time()

    def record(self, seen: SeenRequest) -> None:
        """Append ``seen`` (the handler calls this)."""
        with self._lock:
            self._requests.append(seen)

    def watched(self) -> ProcessSnapshot | None:
        """A snapshot of the watched process, if any."""
        with self._lock:
            pid = self._watched
        return None if pid is None else ProcessSnapshot.read(pid)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _handler_for(server: FakeOpenMetadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 20))
            snapshot = server.watched()
            path = self.path.split("?", 1)[0]
            if not server.authenticate(self.headers.get_all("Authorization") or []):
                status, body = 401, {"code": 401, "message": "Not Authorized! Invalid Token"}
            elif self.command == "GET" and path == VERSION_PATH:
                status = 200
                body = {"version": server.version, "revision": "interop", "timestamp": 0}
            else:
                status, body = 404, {"code": 404, "message": f"{path} not found"}
            server.record(
                SeenRequest(
                    request_line=self.requestline,
                    method=self.command,
                    path=path,
                    headers=list(self.headers.items()),
                    status=status,
                    process=snapshot,
                )
            )
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Silent: the request line is recorded, and headers carry the token."""

    return Handler
