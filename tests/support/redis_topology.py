# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""Redis beyond one plain server, as real processes on 127.0.0.1: TLS, and Sentinel failover.

* :func:`make_tls_files` writes a throw-away CA and a server certificate for 127.0.0.1 (an IP
  SAN, nothing else), made with ``cryptography``.
* :class:`TlsRedis`: ``redis-server --port 0 --tls-port P`` with that certificate.
* :class:`SentinelTopology`: one master, one replica and one or more sentinels (optionally
  with a password everywhere and/or TLS everywhere); :meth:`SentinelTopology.kill_master`
  and :meth:`SentinelTopology.wait_for_failover` drive a failover.

Every process runs in its own process group and is killed with it by ``stop()``; every wait is
bounded in time. Test clients made here are synchronous redis-py clients without retries;
use them in ``with`` blocks so no socket outlives its test.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.processes import ServiceError, _kill_group, _tail, _terminate, free_port

__all__ = [
    "SERVICE_NAME",
    "SentinelTopology",
    "TlsFiles",
    "TlsRedis",
    "make_ca",
    "make_tls_files",
]

SERVICE_NAME = "broker-master"
"""The name the sentinels monitor the master under (the URL's path)."""

_READY_TIMEOUT_SECONDS = 15.0
_POLL_SECONDS = 0.05
_KILL_WAIT_SECONDS = 5.0


# -- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that signed the server certificate, the certificate, its key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(directory: Path, name: str = "test-ca") -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate written to ``directory/<name>.pem``, and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key


def make_tls_files(directory: Path, *, ip: str = "127.0.0.1") -> TlsFiles:
    """A CA and a server certificate valid for ``ip`` only (IP SAN, no DNS name)."""
    ca_path, ca_key = make_ca(directory)
    ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("redis"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Redis uses the same certificate as a client when it replicates over TLS.
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = directory / "redis.pem"
    server_key = directory / "redis.key"
    server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    server_key.write_bytes(_pem_key(key))
    server_key.chmod(0o600)
    return TlsFiles(ca_cert=ca_path, server_cert=server_cert, server_key=server_key)


def _tls_args(tls: TlsFiles) -> list[str]:
    return [
        "--tls-cert-file", str(tls.server_cert),
        "--tls-key-file", str(tls.server_key),
        "--tls-ca-cert-file", str(tls.ca_cert),
        "--tls-auth-clients", "no",
    ]  # fmt: skip


# -- processes ------------------------------------------------------------------------------


def client(
    port: int, *, password: str | None = None, tls: TlsFiles | None = None, timeout: float = 1.0
) -> redis.Redis:
    """A synchronous test client for 127.0.0.1:``port``, no retries; use it in ``with``."""
    options: dict[str, Any] = {}
    if tls is not None:
        options = {"ssl": True, "ssl_ca_certs": str(tls.ca_cert), "ssl_check_hostname": True}
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        **options,
    )


def _answers(port: int, password: str | None, tls: TlsFiles | None) -> bool:
    try:
        with client(port, password=password, tls=tls, timeout=0.5) as probe:
            return bool(probe.ping())
    except redis.RedisError:
        return False


def _wait(
    condition: Callable[[], bool], what: str, timeout: float, logs: list[Path] | None = None
) -> float:
    """Poll ``condition`` until true; the seconds it took, or ServiceError after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{_tail(log, 2000)}" for log in logs or [])
            raise ServiceError(f"{what}: not within {timeout}s\n{tails}")
        time.sleep(_POLL_SECONDS)


class RedisProcess:
    """One ``redis-server`` process (data node or sentinel) on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, name: str, port: int, args: list[str]) -> None:
        self.workdir = workdir
        self.name = name
        self.port = port
        self.args = args
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float = _READY_TIMEOUT_SECONDS) -> None:
        """Start the process and wait until ``ready()`` (it must answer), or raise."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is not on PATH (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, *self.args],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited ({process.returncode}):\n{_tail(self.log_path)}"
                )
            return ready()

        try:
            _wait(up, f"{self.name} answering on port {self.port}", timeout, [self.log_path])
        except BaseException:
            self.stop()
            raise

    def is_running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGKILL)
            self.process.wait(timeout=_KILL_WAIT_SECONDS)
            self.process = None

    def stop(self) -> None:
        """SIGTERM, SIGKILL after a bounded wait."""
        if self.process is not None:
            _terminate(self.process)
            self.process = None


def _data_args(workdir: Path, port: int, tls: TlsFiles | None, password: str | None) -> list[str]:
    args = [
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--daemonize", "no",
        "--repl-diskless-sync-delay", "0",
        "--replica-announce-ip", "127.0.0.1",
    ]  # fmt: skip
    if tls is None:
        args += ["--port", str(port)]
    else:
        args += ["--port", "0", "--tls-port", str(port), "--tls-replication", "yes"]
        args += _tls_args(tls)
    if password is not None:
        args += ["--requirepass", password, "--masterauth", password]
    return args


class TlsRedis:
    """A redis-server that speaks TLS only, on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, tls: TlsFiles) -> None:
        self.tls = tls
        self.port = free_port()
        self.url = f"rediss://127.0.0.1:{self.port}/0"
        self._process = RedisProcess(
            workdir, f"redis-tls-{self.port}", self.port, _data_args(workdir, self.port, tls, None)
        )

    def start(self) -> None:
        """Start and wait until it answers PING over verified TLS."""
        self._process.start(lambda: _answers(self.port, None, self.tls))

    def client(self) -> redis.Redis:
        """A verified TLS test client; use it in ``with``."""
        return client(self.port, tls=self.tls)

    def stop(self) -> None:
        """Stop the server."""
        self._process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class SentinelTopology:
    """A master, one replica and ``sentinels`` sentinels watching :data:`SERVICE_NAME`.

    Failover is quick: a master is down after 1 s without an answer, and one sentinel is a
    quorum. With ``password`` the data nodes and the sentinels all require it; with ``tls``
    everything (clients, replication, sentinels) speaks TLS only.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        sentinels: int = 1,
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.workdir = workdir
        self.password = password
        self.tls = tls
        self.first_master_port = free_port()
        replica_port = free_port()
        self.data: dict[int, RedisProcess] = {}
        for role, port in (("master", self.first_master_port), ("replica", replica_port)):
            args = _data_args(workdir, port, tls, password)
            if role == "replica":
                args += ["--replicaof", "127.0.0.1", str(self.first_master_port)]
            self.data[port] = RedisProcess(workdir, f"{role}-{port}", port, args)
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels = [
            RedisProcess(
                workdir,
                f"sentinel-{port}",
                port,
                [str(self._write_sentinel_conf(port)), "--sentinel"],
            )
            for port in self.sentinel_ports
        ]

    def _write_sentinel_conf(self, port: int) -> Path:
        lines = [
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {self.workdir}",
            "sentinel announce-ip 127.0.0.1",
            f"sentinel monitor {SERVICE_NAME} 127.0.0.1 {self.first_master_port} 1",
            f"sentinel down-after-milliseconds {SERVICE_NAME} 1000",
            f"sentinel failover-timeout {SERVICE_NAME} 5000",
            f"sentinel parallel-syncs {SERVICE_NAME} 1",
        ]
        if self.tls is None:
            lines.append(f"port {port}")
        else:
            lines += [
                "port 0",
                f"tls-port {port}",
                "tls-replication yes",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca_cert}",
                "tls-auth-clients no",
            ]
        if self.password is not None:
            lines += [
                f"sentinel auth-pass {SERVICE_NAME} {self.password}",
                f"requirepass {self.password}",
                f"sentinel sentinel-pass {self.password}",
            ]
        # Sentinel rewrites its config file, so each sentinel gets its own, writable.
        path = self.workdir / f"sentinel-{port}.conf"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- lifecycle --

    def start(self) -> None:
        """Start everything; return once each sentinel sees the master, the replica in sync
        and every other sentinel, so a failover can happen right away."""
        try:
            for port, node in self.data.items():
                node.start(functools.partial(_answers, port, self.password, self.tls))
            _wait(self._replica_in_sync, "replica in sync", _READY_TIMEOUT_SECONDS, self.logs())
            for sentinel in self.sentinels:
                sentinel.start(functools.partial(_answers, sentinel.port, self.password, self.tls))
            _wait(self._sentinels_ready, "sentinels ready", _READY_TIMEOUT_SECONDS, self.logs())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process (sentinels first, so none reacts to the rest going away)."""
        for process in [*self.sentinels, *self.data.values()]:
            process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def logs(self) -> list[Path]:
        """Every process' log file."""
        return [p.log_path for p in [*self.data.values(), *self.sentinels]]

    # -- clients and state --

    def client(self, port: int) -> redis.Redis:
        """A test client for the data node on ``port``; use it in ``with``."""
        return client(port, password=self.password, tls=self.tls)

    def url(self, *, sentinel_auth: bool | None = None, dead_sentinels: int = 0) -> str:
        """The broker's ``redis[s]+sentinel://`` URL listing every sentinel.

        ``sentinel_auth`` defaults to whether a password is set. ``dead_sentinels`` puts that
        many addresses where nothing listens at the front of the list.
        """
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        credentials = f":{self.password}@" if self.password else ""
        ports = [free_port() for _ in range(dead_sentinels)] + self.sentinel_ports
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        auth = self.password is not None if sentinel_auth is None else sentinel_auth
        query = "?sentinel_auth=yes" if auth else ""
        return f"{scheme}://{credentials}{hosts}/{SERVICE_NAME}/0{query}"

    def master_port(self) -> int | None:
        """The master's port according to the first sentinel that answers, or None."""
        for port in self.sentinel_ports:
            try:
                with client(port, password=self.password, tls=self.tls, timeout=0.5) as sentinel:
                    address = sentinel.sentinel_get_master_addr_by_name(SERVICE_NAME)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def role(self, port: int) -> str | None:
        """``master`` or ``slave`` as the data node on ``port`` reports it; None if down."""
        try:
            with self.client(port) as node:
                info = node.info("replication")
        except redis.RedisError:
            return None
        role = info.get("role")
        return role if isinstance(role, str) else None

    def _replica_in_sync(self) -> bool:
        replica = next(p for p in self.data if p != self.first_master_port)
        try:
            with self.client(replica) as node:
                return bool(node.info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            try:
                with client(port, password=self.password, tls=self.tls, timeout=0.5) as sentinel:
                    master = sentinel.sentinel_master(SERVICE_NAME)
                    replicas = sentinel.sentinel_slaves(SERVICE_NAME)
            except redis.RedisError:
                return False
            if not master.get("is_master") or master.get("is_sdown"):
                return False
            if master.get("num-other-sentinels") != len(self.sentinel_ports) - 1:
                return False
            if not any(
                r.get("master-link-status") == "ok" and not r.get("is_sdown") for r in replicas
            ):
                return False
        return True

    # -- failover --

    def kill_master(self) -> int:
        """SIGKILL the current master (as a crash would); its port."""
        port = self.master_port()
        if port is None:
            raise ServiceError("no sentinel names a master")
        self.data[port].kill()
        return port

    def wait_for_failover(self, old_port: int, timeout: float = 15.0) -> tuple[int, float]:
        """Wait until the sentinels name another master and it says it is one.

        Returns the new master's port and the seconds waited.
        """
        found: list[int] = []

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port or self.role(port) != "master":
                return False
            found.append(port)
            return True

        waited = _wait(promoted, "failover", timeout, self.logs())
        return found[-1], waited
