"""Build the Redis client from settings: a plain URL, TLS (``rediss://``) or Sentinel.

``TOKEN_BROKER_REDIS_URL`` takes one of these forms, parsed strictly:

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db]                     TLS
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_auth=yes]
    rediss+sentinel://...                                            TLS to sentinels and master

Ports default to 6379 (Redis) and 26379 (Sentinel); IPv6 hosts go in brackets; special
characters in the user or password are percent-encoded. With Sentinel, the hosts are the
sentinels, ``service`` is the monitored master's name, and the credentials authenticate to
the master (and its replacement after a failover); ``sentinel_auth=yes`` sends them to the
sentinels too, for sentinels configured with ``requirepass``. TLS always verifies the
server's certificate and host name, against the system CAs plus
``TOKEN_BROKER_REDIS_CA_FILE`` when set. Query parameters other than ``sentinel_auth`` are
refused: timeouts and TLS settings come from ``TOKEN_BROKER_*`` only, so a URL cannot turn
verification off.

A malformed URL is reported by :func:`redis_url_problem`; its messages never repeat any part
of the URL, which may hold a password.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from service.config.settings import Settings

REDIS_PORT = 6379
SENTINEL_PORT = 26379
_SCHEMES = {
    "redis": (False, False),
    "rediss": (True, False),
    "redis+sentinel": (False, True),
    "rediss+sentinel": (True, True),
}
_SCHEME_HINT = "use redis://, rediss://, redis+sentinel:// or rediss+sentinel://"
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_SERVICE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_DIGITS = re.compile(r"[0-9]{1,9}")
_TRUE, _FALSE = {"yes", "true", "1"}, {"no", "false", "0"}
_HEALTH_CHECK_SECONDS = 30


class RedisUrlError(ValueError):
    """``TOKEN_BROKER_REDIS_URL`` is malformed; the message never contains the URL."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL. The credentials stay out of ``repr``."""

    tls: bool
    addresses: tuple[tuple[str, int], ...]
    db: int = 0
    service_name: str | None = None
    sentinel_auth: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def sentinel(self) -> bool:
        """True when ``addresses`` are sentinels watching ``service_name``."""
        return self.service_name is not None


def describe_redis_target(target: RedisTarget) -> str:
    """Where ``target`` points, for logs and reports: addresses and master, no credentials."""
    addresses = ",".join(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in target.addresses
    )
    if target.sentinel:
        return f"sentinel {addresses} master {target.service_name}"
    return addresses


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable Redis URL, or None. Never echoes any part of it."""
    try:
        parse_redis_url(url)
    except RedisUrlError as exc:
        return str(exc)
    return None


def redis_ca_file_problem(ca_file: Path | None, url: str) -> str | None:
    """Why ``TOKEN_BROKER_REDIS_CA_FILE`` cannot serve ``url``, or None."""
    if ca_file is None:
        return None
    scheme = url.partition("://")[0].lower()
    if url.partition("://")[1] and scheme in _SCHEMES and not _SCHEMES[scheme][0]:
        return "set, but TOKEN_BROKER_REDIS_URL is not TLS (rediss:// or rediss+sentinel://)"
    try:
        ssl.create_default_context(cafile=str(ca_file))
    except FileNotFoundError:
        return f"{ca_file} does not exist"
    except OSError as exc:  # ssl.SSLError is an OSError
        if isinstance(exc, ssl.SSLError):
            return f"{ca_file} holds no readable PEM certificate"
        return f"cannot read {ca_file}: {exc.strerror}"
    return None


def parse_redis_url(url: str) -> RedisTarget:  # noqa: C901, PLR0912 - one check per URL part
    """Parse ``url`` strictly; raise :class:`RedisUrlError` naming what is wrong."""
    if not url:
        raise RedisUrlError("empty")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise RedisUrlError("contains whitespace or control characters")
    scheme, sep, rest = url.partition("://")
    if sep and "cluster" in scheme.lower():
        raise RedisUrlError(f"Redis Cluster is not supported yet; {_SCHEME_HINT}")
    if not sep or scheme.lower() not in _SCHEMES:
        raise RedisUrlError(f"unsupported or missing scheme; {_SCHEME_HINT}")
    tls, sentinel = _SCHEMES[scheme.lower()]
    if "#" in rest:
        raise RedisUrlError("contains '#'; percent-encode it (%23) in a password")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, hostpart = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        if not colon:
            raise RedisUrlError("credentials need a password: user:password@ or :password@")
        if not secret:
            raise RedisUrlError("the password is empty")
        username, password = (unquote(user) or None), unquote(secret)
    if not hostpart:
        raise RedisUrlError("no host")
    default_port = SENTINEL_PORT if sentinel else REDIS_PORT
    hosts = hostpart.split(",")
    if not sentinel and len(hosts) > 1:
        raise RedisUrlError("names several hosts; only redis+sentinel:// takes a list")
    addresses = tuple(
        _address(host, default_port, index, len(hosts)) for index, host in enumerate(hosts, 1)
    )
    segments = path.split("/") if slash else []
    service_name: str | None = None
    if sentinel:
        if not segments or not segments[0]:
            raise RedisUrlError(
                "needs the master's service name as its path: "
                "redis+sentinel://host:26379/mymaster[/db]"
            )
        if not _SERVICE.fullmatch(segments[0]):
            raise RedisUrlError("the service name may only hold letters, digits, '.', '_', '-'")
        service_name, segments = segments[0], segments[1:]
    db = 0
    if segments and segments != [""]:
        if len(segments) > 1 or not _DIGITS.fullmatch(segments[0]):
            raise RedisUrlError("the database must be a number: .../0")
        db = int(segments[0])
    sentinel_auth = _query(query, sentinel=sentinel)
    if sentinel_auth and password is None:
        raise RedisUrlError("sentinel_auth=yes needs credentials in the URL")
    return RedisTarget(
        tls=tls,
        addresses=addresses,
        db=db,
        service_name=service_name,
        sentinel_auth=sentinel_auth,
        username=username,
        password=password,
    )


def _address(text: str, default_port: int, index: int, count: int) -> tuple[str, int]:
    where = f"host {index} of {count}" if count > 1 else "the host"
    if text.startswith("["):
        inside, bracket, after = text[1:].partition("]")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise RedisUrlError(f"{where}: not a valid bracketed IPv6 address") from None
        if not bracket or (after and not after.startswith(":")):
            raise RedisUrlError(f"{where}: expected [ipv6] or [ipv6]:port")
        host, port_text = inside, after[1:] if after else None
    else:
        host, colon, port_text_raw = text.partition(":")
        port_text = port_text_raw if colon else None
        if not host:
            raise RedisUrlError(f"{where}: the host name is empty")
        if not _HOSTNAME.fullmatch(host):
            raise RedisUrlError(
                f"{where}: not a valid host name or IPv4 address (IPv6 goes in brackets; "
                "percent-encode special characters in a password)"
            )
    if port_text is None:
        return host, default_port
    if not _DIGITS.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:  # noqa: PLR2004
        raise RedisUrlError(f"{where}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _query(query: str, *, sentinel: bool) -> bool:
    """The ``sentinel_auth`` flag; every other query parameter is refused."""
    if not query:
        return False
    if not sentinel:
        raise RedisUrlError(
            "query parameters are not accepted; timeouts and TLS come from TOKEN_BROKER_* settings"
        )
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise RedisUrlError("the query string is malformed") from None
    if len(pairs) != 1 or pairs[0][0] != "sentinel_auth":
        raise RedisUrlError("the only query parameter accepted is sentinel_auth=yes|no")
    value = pairs[0][1].lower()
    if value not in _TRUE | _FALSE:
        raise RedisUrlError("sentinel_auth must be yes or no")
    return value in _TRUE


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to whichever node the sentinels name as master, queued when all are busy.

    Closing the pool also closes the clients that talk to the sentinels.
    """

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def connect_redis(settings: Settings) -> Redis:
    """A client for ``TOKEN_BROKER_REDIS_URL``; connects lazily, on first use.

    Close it with ``aclose(close_connection_pool=True)``: that also closes the sentinels.
    """
    assert settings.redis_url is not None
    target = parse_redis_url(settings.redis_url.get_secret_value())
    timeouts: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
    }
    tls: dict[str, Any] = {}
    if target.tls:
        # Verification is never optional: no URL parameter or setting can turn it off.
        tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
        if settings.redis_ca_file is not None:
            tls["ssl_ca_certs"] = str(settings.redis_ca_file)
    credentials = {"username": target.username, "password": target.password}
    # A blocking pool queues a burst of requests for a connection instead of failing them.
    pool_options: dict[str, Any] = {
        "max_connections": settings.redis_max_connections,
        "timeout": settings.redis_timeout_seconds,
        "db": target.db,
        "health_check_interval": _HEALTH_CHECK_SECONDS,
        # One immediate retry on a fresh connection when a pooled one turns out dead (Redis
        # restarted): without it every stale connection costs a request a degraded answer.
        # Timeouts are not retried: a hung Redis would only double the wait.
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError],
        **timeouts,
        **tls,
        **credentials,
    }
    if not target.sentinel:
        host, port = target.addresses[0]
        pool: BlockingConnectionPool = BlockingConnectionPool(
            connection_class=SSLConnection if target.tls else Connection,
            host=host,
            port=port,
            **pool_options,
        )
        return Redis(connection_pool=pool)
    assert target.service_name is not None
    # Sentinels are asked once each per lookup, without retries: the list is the redundancy.
    sentinel_options: dict[str, Any] = {**timeouts, "retry": Retry(NoBackoff(), 0)}
    if target.tls:
        sentinel_options.update(ssl=True, **tls)
    if target.sentinel_auth:
        sentinel_options.update(credentials)
    # redis-py's sentinel module carries no type annotations.
    sentinels = Sentinel(list(target.addresses), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    sentinel_pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
        target.service_name, sentinels, ssl=target.tls, **pool_options
    )
    return Redis(connection_pool=sentinel_pool)
