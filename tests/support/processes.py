# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""Real backing services for the integration tests: Redis, oidc-provider, oauth2-mock-server.

Every service listens on 127.0.0.1 only, runs in its own process group (``start_new_session``)
and is killed with its whole group by ``stop()``, also when startup failed half-way. Every wait
is bounded. The Node issuers live in ``tests/idp`` (``npm ci`` there via
:func:`ensure_node_modules`) and sit behind a :class:`~tests.support.proxy.CountingProxy`, whose
address is the issuer URL the broker is configured with.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import IO, Any, Self
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.proxy import CountingProxy, Fault, start_proxy

__all__ = [
    "IDP_DIR",
    "CountingProxy",
    "Fault",
    "MockServer",
    "OidcClient",
    "OidcProvider",
    "RedisServer",
    "ServiceError",
    "ensure_node_modules",
    "free_port",
    "http_get_json",
    "start_mock_server",
    "start_oidc_provider",
    "start_proxy",
    "start_redis",
]

IDP_DIR = Path(__file__).resolve().parents[1] / "idp"
"""``tests/idp``: package.json, package-lock.json and the two Node launchers."""

DEFAULT_SCOPES: tuple[str, ...] = ("ingestion", "read", "write")
DEFAULT_RESOURCE = "urn:openmetadata"

_READY_TIMEOUT_SECONDS = 20.0
_STOP_TIMEOUT_SECONDS = 5.0
_NPM_TIMEOUT_SECONDS = 300.0
_NPM_STAMP = ".token-broker-lock.sha256"


class ServiceError(RuntimeError):
    """A backing service could not be installed, started or reached."""


# -- small helpers --------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get_json(url: str, timeout: float = 5.0) -> Any:
    """GET ``url`` (http://127.0.0.1 only, no proxies from the environment) and parse JSON."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only plain http URLs are supported: {url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise ServiceError(f"GET {url} -> {response.status}: {body[:500]!r}")
    return json.loads(body)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-limit:]


def _kill_group(process: subprocess.Popen[Any], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _terminate(process: subprocess.Popen[Any], timeout: float = _STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after ``timeout``."""
    if process.poll() is None:
        _kill_group(process, signal.SIGTERM)
        _kill_group(process, signal.SIGCONT)  # a paused process must run to handle SIGTERM
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process, signal.SIGKILL)
            process.wait(timeout=timeout)
    # Leftover children of the group (none expected) must not outlive the test run.
    _kill_group(process, signal.SIGKILL)


def _lockfile_digest() -> str:
    return hashlib.sha256((IDP_DIR / "package-lock.json").read_bytes()).hexdigest()


def ensure_node_modules() -> None:
    """Run ``npm ci`` in tests/idp unless node_modules matches package-lock.json already.

    A stamp file inside node_modules records the lockfile's hash, so a changed lockfile (not
    just a newer mtime) triggers a reinstall. A file lock in the temp dir keeps concurrent test
    runs (xdist workers, two sessions) from installing over each other.
    """
    node_modules = IDP_DIR / "node_modules"
    stamp = node_modules / _NPM_STAMP
    digest = _lockfile_digest()

    def installed() -> bool:
        try:
            return stamp.read_text().strip() == digest
        except OSError:
            return False

    if installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ServiceError("npm is not on PATH; install Node.js (>= 20.19) and npm")
    lock_name = "token-broker-idp-" + hashlib.sha256(str(IDP_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"{lock_name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if installed():
                return
            try:
                result = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=IDP_DIR,
                    capture_output=True,
                    text=True,
                    timeout=_NPM_TIMEOUT_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ServiceError(f"npm ci in {IDP_DIR} timed out") from exc
            if result.returncode != 0:
                raise ServiceError(
                    f"npm ci in {IDP_DIR} failed ({result.returncode}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
                )
            stamp.write_text(digest + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- Redis ----------------------------------------------------------------------------------


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1 (no persistence). Use :func:`start_redis`."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port: int = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = workdir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start redis-server on :attr:`port` and wait until it answers PING."""
        if self.is_running():
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is not on PATH (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _redis_ping(self.port):
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise ServiceError(
                    f"redis-server exited ({code}) on port {self.port}:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"redis-server did not answer PING within {timeout}s:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def is_running(self) -> bool:
        """True while the redis-server process is alive (it may be paused)."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Shut Redis down (SIGTERM, SIGKILL after a bounded wait)."""
        if self.process is not None:
            _terminate(self.process)
            self.process = None

    def kill(self) -> None:
        """SIGKILL Redis, like a crash."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGKILL)
            self.process.wait(timeout=_STOP_TIMEOUT_SECONDS)
            self.process = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port; the data is gone."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP Redis: connections stay open but nothing is answered (a hung server)."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused Redis."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGCONT)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_redis(workdir: Path) -> RedisServer:
    """Start a :class:`RedisServer` on a free port, logging to a file in ``workdir``."""
    server = RedisServer(workdir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


# -- Node issuers ---------------------------------------------------------------------------


class _NotReady(ServiceError):
    """A service that neither got ready nor exited in time."""


class _NodeService:
    """One ``node tests/idp/<script> CONFIG`` process that prints a JSON ready line."""

    def __init__(self, script: str, config: dict[str, Any], workdir: Path, name: str) -> None:
        self.script = IDP_DIR / script
        self.config = config
        self.workdir = workdir
        self.config_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None
        self.ready_line: dict[str, Any] = {}

    def start(self, timeout: float = _READY_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Start the script and wait for its ready line; one more try after a silent timeout.

        Seen once in a full suite run: node neither printed its ready line nor exited within
        20 s, and started in under a second right after. A start that fails loudly (the
        script exited) is not retried.
        """
        try:
            return self._start_once(timeout)
        except _NotReady:
            with self.log_path.open("a") as log:
                log.write(f"[test harness] not ready within {timeout}s; starting it again\n")
            return self._start_once(timeout)

    def _start_once(self, timeout: float) -> dict[str, Any]:
        node = shutil.which("node")
        if node is None:
            raise ServiceError("node is not on PATH; install Node.js (>= 20.19)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        lines: queue.Queue[str | None] = queue.Queue()
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [node, str(self.script), str(self.config_path)],
                cwd=IDP_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        stdout = self.process.stdout
        assert stdout is not None
        self._pump = threading.Thread(
            target=_pump_lines, args=(stdout, lines), name=f"{self.script.name}-stdout", daemon=True
        )
        self._pump.start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise _NotReady(
                    f"{self.script.name} was not ready within {timeout}s:\n{_tail(self.log_path)}"
                )
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=_STOP_TIMEOUT_SECONDS)
                code = self.process.returncode
                self.stop()
                raise ServiceError(
                    f"{self.script.name} exited ({code}) before it was ready:\n"
                    f"{_tail(self.log_path)}"
                )
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict) and parsed.get("ready") is True:
                    self.ready_line = parsed
                    return parsed
            with self.log_path.open("a") as log:
                log.write(f"[stdout] {line}")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        pump, self._pump = self._pump, None
        if process is not None:
            _terminate(process)
            if pump is not None:
                pump.join(timeout=_STOP_TIMEOUT_SECONDS)
            if process.stdout is not None:
                process.stdout.close()


def _pump_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            lines.put(line)
    lines.put(None)


@dataclass(frozen=True, slots=True)
class OidcClient:
    """A client registered at the :class:`OidcProvider`."""

    client_id: str
    token_endpoint_auth_method: str
    client_secret: str | None = None
    private_key_pem_path: Path | None = None
    """PEM (PKCS#8, unencrypted) of the RSA key whose public half is registered; private_key_jwt."""
    kid: str | None = None
    """``kid`` of that key, to put in the client assertion header."""
    scope: str | None = None
    """Space-separated allow-list, if the client was registered with one."""


def _rsa_client_key(workdir: Path, client_id: str) -> tuple[Path, str, dict[str, Any]]:
    """Generate an RSA-2048 key: write the private PEM, return (path, kid, public JWK set)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_path = workdir / f"{client_id}.pem"
    pem_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem_path.chmod(0o600)
    numbers = key.public_key().public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    kid = f"{client_id}-{secrets.token_hex(4)}"
    jwk = {"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e), "kid": kid, "alg": "RS256"}
    jwk["use"] = "sig"
    return pem_path, kid, {"keys": [jwk]}


def _default_clients() -> list[dict[str, Any]]:
    return [
        {
            "client_id": "broker-basic",
            "client_secret": f"basic-secret-{secrets.token_hex(8)}",
            "token_endpoint_auth_method": "client_secret_basic",
        },
        {
            "client_id": "broker-post",
            "client_secret": f"post-secret-{secrets.token_hex(8)}",
            "token_endpoint_auth_method": "client_secret_post",
        },
        {"client_id": "broker-jwt", "token_endpoint_auth_method": "private_key_jwt"},
    ]


class OidcProvider:
    """oidc-provider (panva) behind a :class:`CountingProxy`. Use :func:`start_oidc_provider`.

    The issuer URL is the proxy's (``http://127.0.0.1:<proxy.port>``), so every request the
    broker makes to the IdP, discovery and JWKS included, is seen by :attr:`proxy`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        clients: list[dict[str, Any]] | None = None,
        access_token_ttl: int = 3600,
        scopes: list[str] | None = None,
        resource: str = DEFAULT_RESOURCE,
        issuer_path: str = "",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.access_token_ttl = access_token_ttl
        self.scopes: list[str] = list(DEFAULT_SCOPES if scopes is None else scopes)
        self.resource = resource
        self.upstream_port = free_port()
        self.proxy: CountingProxy = start_proxy(self.upstream_port)
        try:
            self._configure(clients, issuer_path)
        except BaseException:
            self.proxy.stop()
            raise

    def _configure(self, clients: list[dict[str, Any]] | None, issuer_path: str) -> None:
        self.issuer = f"http://127.0.0.1:{self.proxy.port}{issuer_path.rstrip('/')}"
        self.discovery_url = f"{self.issuer}/.well-known/openid-configuration"
        self.token_endpoint = f"{self.issuer}/token"
        self.jwks_uri = f"{self.issuer}/jwks"
        self.clients: dict[str, OidcClient] = {}
        registered: list[dict[str, Any]] = []
        for spec in _default_clients() if clients is None else clients:
            entry = dict(spec)
            pem_path: Path | None = None
            kid: str | None = None
            if entry["token_endpoint_auth_method"] == "private_key_jwt" and "jwks" not in entry:
                pem_path, kid, entry["jwks"] = _rsa_client_key(self.workdir, entry["client_id"])
            registered.append(entry)
            self.clients[entry["client_id"]] = OidcClient(
                client_id=entry["client_id"],
                token_endpoint_auth_method=entry["token_endpoint_auth_method"],
                client_secret=entry.get("client_secret"),
                private_key_pem_path=pem_path,
                kid=kid,
                scope=entry.get("scope"),
            )
        self._node = _NodeService(
            "oidc_provider.mjs",
            {
                "port": self.upstream_port,
                "issuer": self.issuer,
                "access_token_ttl": self.access_token_ttl,
                "resource": self.resource,
                "scopes": self.scopes,
                "clients": registered,
            },
            self.workdir,
            f"oidc-provider-{self.upstream_port}",
        )
        self.log_path = self._node.log_path
        self.config_path = self._node.config_path

    @property
    def private_key_pem_path(self) -> Path:
        """PEM of the first private_key_jwt client's RSA key ("broker-jwt" by default)."""
        for client in self.clients.values():
            if client.private_key_pem_path is not None:
                return client.private_key_pem_path
        raise LookupError("no private_key_jwt client with a generated key is registered")

    def client(self, client_id: str) -> OidcClient:
        """The registered client ``client_id``."""
        return self.clients[client_id]

    def start(self) -> None:
        """Start node and check discovery through the proxy (then zero the proxy's counters)."""
        self._node.start()
        discovery = http_get_json(self.discovery_url)
        for key, expected in (
            ("issuer", self.issuer),
            ("token_endpoint", self.token_endpoint),
            ("jwks_uri", self.jwks_uri),
        ):
            if discovery.get(key) != expected:
                raise ServiceError(f"discovery {key} is {discovery.get(key)!r}, not {expected!r}")
        self.proxy.reset()

    def restart(self) -> None:
        """Restart node on the same port behind the same proxy: a NEW signing key, and every
        issued token is forgotten (key rotation / IdP restart)."""
        self._node.stop()
        self._node.start()

    def is_running(self) -> bool:
        """True while the node process is alive."""
        return self._node.is_running()

    def jwks(self) -> dict[str, Any]:
        """The provider's public JWK set, fetched through the proxy (counted there)."""
        document: dict[str, Any] = http_get_json(self.jwks_uri)
        return document

    def stop(self) -> None:
        """Stop node and the proxy."""
        try:
            self._node.stop()
        finally:
            self.proxy.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_oidc_provider(
    workdir: Path,
    *,
    clients: list[dict[str, Any]] | None = None,
    access_token_ttl: int = 3600,
    scopes: list[str] | None = None,
    resource: str = DEFAULT_RESOURCE,
    issuer_path: str = "",
) -> OidcProvider:
    """Start oidc-provider behind a CountingProxy; see tests/idp/oidc_provider.mjs.

    ``clients`` entries are ``{"client_id", "client_secret"?, "token_endpoint_auth_method",
    "jwks"?, "scope"?}``; a private_key_jwt client without ``jwks`` gets a fresh RSA key
    (PEM in ``workdir``, see :class:`OidcClient`). Default: broker-basic, broker-post,
    broker-jwt. ``scopes`` defaults to ["ingestion", "read", "write"]. ``issuer_path``
    (e.g. "/realms/om") mounts the provider under a path, Keycloak style.
    """
    provider = OidcProvider(
        workdir,
        clients=clients,
        access_token_ttl=access_token_ttl,
        scopes=scopes,
        resource=resource,
        issuer_path=issuer_path,
    )
    try:
        provider.start()
    except BaseException:
        provider.stop()
        raise
    return provider


class MockServer:
    """oauth2-mock-server behind a :class:`CountingProxy`. Use :func:`start_mock_server`.

    It accepts any client credentials and any scope. Its issuer is the proxy URL (the mock
    builds discovery URLs from the configured issuer, not from the request).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        expires_in: int | str | EllipsisType | None = ...,
        token_ttl: int = 3600,
        audience: str | None = DEFAULT_RESOURCE,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.expires_in = expires_in
        self.token_ttl = token_ttl
        self.audience = audience
        self.upstream_port = free_port()
        self.proxy: CountingProxy = start_proxy(self.upstream_port)
        self.issuer = self.proxy.url
        self.discovery_url = f"{self.issuer}/.well-known/openid-configuration"
        self.token_endpoint = f"{self.issuer}/token"
        self.jwks_uri = f"{self.issuer}/jwks"
        config: dict[str, Any] = {
            "port": self.upstream_port,
            "issuer": self.issuer,
            "token_ttl": token_ttl,
        }
        if not isinstance(expires_in, EllipsisType):
            config["expires_in"] = expires_in
        if audience is not None:
            config["audience"] = audience
        self._node = _NodeService(
            "mock_server.mjs", config, workdir, f"oauth2-mock-server-{self.upstream_port}"
        )
        self.log_path = self._node.log_path
        self.config_path = self._node.config_path

    def start(self) -> None:
        """Start node, check the issuer it reports and discovery through the proxy."""
        ready = self._node.start()
        if ready.get("issuer") != self.issuer:
            raise ServiceError(f"mock server reports issuer {ready.get('issuer')!r}")
        discovery = http_get_json(self.discovery_url)
        if discovery.get("token_endpoint") != self.token_endpoint:
            raise ServiceError(
                f"mock discovery token_endpoint is {discovery.get('token_endpoint')}"
            )
        self.proxy.reset()

    def is_running(self) -> bool:
        """True while the node process is alive."""
        return self._node.is_running()

    def stop(self) -> None:
        """Stop node and the proxy."""
        try:
            self._node.stop()
        finally:
            self.proxy.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_mock_server(
    workdir: Path,
    *,
    expires_in: int | str | EllipsisType | None = ...,
    token_ttl: int = 3600,
    audience: str | None = DEFAULT_RESOURCE,
) -> MockServer:
    """Start oauth2-mock-server behind a CountingProxy; see tests/idp/mock_server.mjs.

    ``expires_in``: ``...`` (default) answers ``expires_in = token_ttl``; an int or str is put
    in the token response as is; ``None`` removes ``expires_in`` from the response. The JWT's
    ``exp - iat`` is always ``token_ttl``. ``audience`` is the JWT ``aud`` when the request
    names no ``aud``/``resource``/``audience``.
    """
    server = MockServer(workdir, expires_in=expires_in, token_ttl=token_ttl, audience=audience)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
