# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""A counting, fault-injecting HTTP reverse proxy for putting in front of a test issuer.

Everything the broker sends to "the IdP" goes through a :class:`CountingProxy`, so a test can
assert how many token requests actually reached the issuer (cache hits must not) and make the
issuer fail on demand (503, 429, hang, connection reset, slow response).

The proxy forwards method, path, query, body and every end-to-end header *including Host*
unchanged to ``127.0.0.1:<upstream_port>``: an issuer that builds its URLs from the Host header
(oidc-provider does) therefore advertises the proxy's address in discovery. Hop-by-hop headers
(Connection, Keep-Alive, Transfer-Encoding, ...) are not forwarded; a chunked request body is
de-chunked and sent with a Content-Length.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal, Self, get_args
from urllib.parse import parse_qs, urlsplit

__all__ = ["HANG_MAX_SECONDS", "CapturedRequest", "CountingProxy", "Fault", "start_proxy"]

Fault = Literal["error503", "error429", "hang", "reset", "delay"]
"""The faults :meth:`CountingProxy.set_fault` can inject."""

HANG_MAX_SECONDS = 30.0
"""Upper bound on how long a "hang" fault holds a request before closing the connection."""

_UPSTREAM_TIMEOUT_SECONDS = 60.0
_IDLE_CLIENT_TIMEOUT_SECONDS = 120.0
_DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True, slots=True)
class CapturedRequest:
    """One request as it reached the proxy (before any fault was applied)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    is_token_request: bool

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lower = name.lower()
        return next((value for key, value in self.headers if key.lower() == lower), None)

    @property
    def form(self) -> dict[str, str]:
        """The body parsed as application/x-www-form-urlencoded (last value wins)."""
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {key: values[-1] for key, values in parsed.items()}


@dataclass(frozen=True, slots=True)
class _FaultPlan:
    fault: Fault
    delay_seconds: float
    fault_all: bool
    retry_after: int | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    proxy: CountingProxy

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out or drop connections are normal here; stay quiet.
        return

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self.proxy._track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        self.proxy._untrack(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_CLIENT_TIMEOUT_SECONDS
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    def do_PATCH(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def do_OPTIONS(self) -> None:
        self._proxy()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer section ends with an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length", "0") or "0")
        return self.rfile.read(length) if length > 0 else b""

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        plan = proxy._record(self.command, self.path, tuple(self.headers.items()), body)
        if plan is not None:
            if plan.fault == "delay":
                if proxy._sleep(plan.delay_seconds):
                    self._reset()
                    return
            elif plan.fault == "hang":
                proxy._sleep(min(plan.delay_seconds, HANG_MAX_SECONDS))
                self.close_connection = True
                return
            elif plan.fault == "reset":
                self._reset()
                return
            else:
                status = 503 if plan.fault == "error503" else 429
                self._send_plain(status, plan.retry_after)
                return
        self._forward(body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, sending no response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _send_plain(self, status: int, retry_after: int | None) -> None:
        payload = f"{status} {http.client.responses[status]} (injected by CountingProxy)\n"
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _forward(self, body: bytes) -> None:
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(
            "127.0.0.1", proxy.upstream_port, timeout=_UPSTREAM_TIMEOUT_SECONDS
        )
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                lower = name.lower()
                if lower in _HOP_BY_HOP or lower == "content-length":
                    continue
                conn.putheader(name, value)
            if body or self.command in {"POST", "PUT", "PATCH"}:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            data = response.read()
            status, reason = response.status, response.reason
            headers = response.getheaders()
        except (OSError, http.client.HTTPException) as exc:
            self._send_bad_gateway(exc)
            return
        finally:
            conn.close()
        if (
            self.command == "GET"
            and status == 200
            and urlsplit(self.path).path.endswith(_DISCOVERY_SUFFIX)
        ):
            proxy._learn_discovery(data)
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                continue
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_bad_gateway(self, exc: BaseException) -> None:
        data = f"502 Bad Gateway (CountingProxy: upstream error {exc!r})\n".encode()
        self.send_response(502)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class CountingProxy:
    """Threaded reverse proxy on 127.0.0.1 that counts requests and injects faults.

    Use :func:`start_proxy` to create one. Thread-safe: tests may call :meth:`set_fault`,
    :meth:`reset` and read the counters while requests are in flight.
    """

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._token_requests = 0
        self._requests: list[tuple[str, str]] = []
        self._captured: list[CapturedRequest] = []
        self._token_paths: set[str] = set()
        self._plan: _FaultPlan | None = None
        self._remaining: int | None = None
        self._fault_generation = 0
        self._sockets: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", port or 0), _Handler)
        self._server.proxy = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"CountingProxy:{self.port}",
            daemon=True,
        )
        self._thread.start()

    # -- counters ---------------------------------------------------------------------------

    @property
    def token_requests(self) -> int:
        """How many token-endpoint POSTs reached the proxy (faulted ones included)."""
        with self._lock:
            return self._token_requests

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request that reached the proxy, as ``(method, path)``, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def captured(self) -> list[CapturedRequest]:
        """Every request with its headers and body, oldest first (a copy).

        Handy to check *how* the broker talked to the issuer, e.g. client_secret_basic vs
        client_secret_post: oidc-provider itself accepts either for a secret-based client.
        """
        with self._lock:
            return list(self._captured)

    @property
    def token_request_log(self) -> list[CapturedRequest]:
        """The captured token requests only, oldest first."""
        with self._lock:
            return [request for request in self._captured if request.is_token_request]

    def reset(self) -> None:
        """Zero the counters and forget captured requests (faults are left as they are)."""
        with self._lock:
            self._token_requests = 0
            self._requests.clear()
            self._captured.clear()

    def wait_for_token_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` token requests were seen; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._token_requests < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    # -- faults -----------------------------------------------------------------------------

    @property
    def fault(self) -> Fault | None:
        """The fault currently injected, or None."""
        with self._lock:
            return None if self._plan is None else self._plan.fault

    def set_fault(
        self,
        fault: Fault | None,
        *,
        delay_seconds: float = HANG_MAX_SECONDS,
        fault_all: bool = False,
        times: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Inject ``fault`` into token requests (or into every request with ``fault_all``).

        - ``"error503"`` / ``"error429"``: answer with that status and a text/plain body,
          plus ``Retry-After: retry_after`` when given; the issuer is not contacted.
        - ``"delay"``: wait ``delay_seconds``, then forward.
        - ``"hang"``: hold the request ``min(delay_seconds, HANG_MAX_SECONDS)`` seconds (or
          until the fault is changed or the proxy stops), then close without a response.
        - ``"reset"``: abort the connection with a TCP RST, no response.
        - ``None``: forward everything again; releases requests held by "hang"/"delay".

        ``times`` limits the fault to the next N matching requests, then it clears itself.
        Requests are counted whether or not they are faulted.
        """
        if fault is not None and fault not in get_args(Fault):
            raise ValueError(f"unknown fault {fault!r}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1")
        with self._changed:
            self._plan = (
                None
                if fault is None
                else _FaultPlan(
                    fault=fault,
                    delay_seconds=max(0.0, delay_seconds),
                    fault_all=fault_all,
                    retry_after=retry_after,
                )
            )
            self._remaining = times if fault is not None else None
            self._fault_generation += 1
            self._changed.notify_all()

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop serving, release held requests and close every client connection."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- used by the handler ----------------------------------------------------------------

    def _is_token_request(self, method: str, path: str) -> bool:
        if method != "POST":
            return False
        bare = urlsplit(path).path
        return bare.endswith("/token") or bare in self._token_paths

    def _record(
        self, method: str, path: str, headers: tuple[tuple[str, str], ...], body: bytes
    ) -> _FaultPlan | None:
        with self._changed:
            self._requests.append((method, path))
            is_token = self._is_token_request(method, path)
            self._captured.append(CapturedRequest(method, path, headers, body, is_token))
            if is_token:
                self._token_requests += 1
            self._changed.notify_all()
            plan = self._plan
            if plan is None or not (is_token or plan.fault_all):
                return None
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._plan = None
                    self._remaining = None
            return plan

    def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; wake early on stop or fault change. True if stopping."""
        deadline = time.monotonic() + seconds
        with self._changed:
            generation = self._fault_generation
            while not self._stopping.is_set() and generation == self._fault_generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self._stopping.is_set()

    def _learn_discovery(self, data: bytes) -> None:
        try:
            document = json.loads(data)
        except ValueError:
            return
        endpoint = document.get("token_endpoint") if isinstance(document, dict) else None
        if isinstance(endpoint, str):
            with self._lock:
                self._token_paths.add(urlsplit(endpoint).path)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)


def start_proxy(upstream_port: int, port: int | None = None) -> CountingProxy:
    """Start a :class:`CountingProxy` on 127.0.0.1:``port`` (a free one if None)."""
    return CountingProxy(upstream_port, port)
