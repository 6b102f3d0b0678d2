"""TOKEN_BROKER_REDIS_URL: strict parsing, errors that never show a password, client wiring."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from service.config.settings import Settings
from service.errors import ConfigError
from service.runtime import load_checked
from service.store.connection import (
    RedisTarget,
    connect_redis,
    parse_redis_url,
    redis_ca_file_problem,
    redis_url_problem,
)
from service.store.crypto import new_cache_key
from tests.support.redis_topology import make_ca

PASSWORD = "Sup3r-s3cret"  # a marker that must never show up in an error


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://127.0.0.1:6380/2",
            RedisTarget(tls=False, addresses=(("127.0.0.1", 6380),), db=2),
        ),
        ("redis://redis", RedisTarget(tls=False, addresses=(("redis", 6379),))),
        ("REDIS://redis/", RedisTarget(tls=False, addresses=(("redis", 6379),))),
        (
            "rediss://cache.internal.example:6380/0",
            RedisTarget(tls=True, addresses=(("cache.internal.example", 6380),)),
        ),
        ("redis://[::1]:7000", RedisTarget(tls=False, addresses=(("::1", 7000),))),
        (
            f"redis://:{PASSWORD}@h:1",
            RedisTarget(tls=False, addresses=(("h", 1),), password=PASSWORD),
        ),
        (
            "redis://broker:p%40ss%2Fw%3Ard@h",
            RedisTarget(
                tls=False, addresses=(("h", 6379),), username="broker", password="p@ss/w:rd"
            ),
        ),
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/mymaster",
            RedisTarget(
                tls=False,
                addresses=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
                service_name="mymaster",
            ),
        ),
        (
            f"rediss+sentinel://u:{PASSWORD}@s1/my-master.a_b/3?sentinel_auth=yes",
            RedisTarget(
                tls=True,
                addresses=(("s1", 26379),),
                db=3,
                service_name="my-master.a_b",
                sentinel_auth=True,
                username="u",
                password=PASSWORD,
            ),
        ),
        (
            f"redis+sentinel://:{PASSWORD}@s1/m?sentinel_auth=no",
            RedisTarget(tls=False, addresses=(("s1", 26379),), service_name="m", password=PASSWORD),
        ),
    ],
)
def test_good_urls_parse(url: str, expected: RedisTarget) -> None:
    """Each supported URL form parses to its hosts, db, service name and credentials."""
    assert parse_redis_url(url) == expected
    assert redis_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "empty"),
        (f"{PASSWORD}@127.0.0.1:6379", "scheme"),
        (f"http://:{PASSWORD}@h:6379", "scheme"),
        (f"unix://:{PASSWORD}@/run/redis.sock", "scheme"),
        (f"redis://:{PASSWORD} @h", "whitespace"),
        (f"redis://:{PASSWORD}\n@h", "whitespace"),
        (f"redis://:{PASSWORD}#x@h", "'#'"),
        (f"redis://{PASSWORD}@h", "need a password"),
        ("redis://user:@h", "password is empty"),
        (f"redis://:{PASSWORD}@", "no host"),
        (f"redis://:{PASSWORD}@:6379", "host name is empty"),
        (f"redis://:{PASSWORD}@h:0", "port"),
        (f"redis://:{PASSWORD}@h:65536", "port"),
        (f"redis://:{PASSWORD}@h:{PASSWORD}", "port"),
        (f"redis://:{PASSWORD}@h:", "port"),
        (f"redis://:{PASSWORD}@h!st", "not a valid host"),
        (f"redis://:{PASSWORD}@[{PASSWORD}]:1", "IPv6"),
        (f"redis://:{PASSWORD}@[::1]x", "[ipv6]:port"),
        # An unencoded '/' in a password ends the host part: still no echo.
        (f"redis://:{PASSWORD}/x@h", "host name is empty"),
        (f"redis://:{PASSWORD}@a,b", "several hosts"),
        (f"redis://:{PASSWORD}@h/{PASSWORD}", "database"),
        (f"redis://:{PASSWORD}@h/1/2", "database"),
        (f"redis://:{PASSWORD}@h/-1", "database"),
        (f"rediss://:{PASSWORD}@h?ssl_cert_reqs=none", "query parameters"),
        (f"redis://:{PASSWORD}@h/0?db=1", "query parameters"),
        (f"redis+sentinel://:{PASSWORD}@s1", "service name"),
        (f"redis+sentinel://:{PASSWORD}@s1/", "service name"),
        (f"redis+sentinel://:{PASSWORD}@s1,/m", "host 2 of 2"),
        (f"redis+sentinel://:{PASSWORD}@s1/m!x", "service name may only"),
        (f"redis+sentinel://:{PASSWORD}@s1/m/x", "database"),
        (f"redis+sentinel://:{PASSWORD}@s1/m?sentinel_auth=maybe", "yes or no"),
        (f"redis+sentinel://:{PASSWORD}@s1/m?{PASSWORD}=1", "only query parameter"),
        (f"redis+sentinel://:{PASSWORD}@s1/m?sentinel_auth=yes&x=1", "only query parameter"),
        (f"redis+sentinel://:{PASSWORD}@s1/m?sentinel_auth", "malformed"),
        ("redis+sentinel://s1/m?sentinel_auth=yes", "needs credentials"),
    ],
)
def test_bad_urls_are_named_without_the_password(url: str, fragment: str) -> None:
    """A malformed URL gets a message saying what is wrong, never echoing the password."""
    problem = redis_url_problem(url)
    assert problem is not None
    assert fragment in problem
    assert PASSWORD not in problem
    assert PASSWORD[:6] not in problem


def test_repr_hides_credentials() -> None:
    """A parsed target's repr (e.g. in a traceback) holds neither user nor password."""
    target = parse_redis_url(f"redis://someone:{PASSWORD}@h")
    assert PASSWORD not in repr(target)
    assert "someone" not in repr(target)


def test_startup_reports_url_problem_with_its_variable(tmp_path: Path) -> None:
    """load_checked lists TOKEN_BROKER_REDIS_URL's problem with the others, password masked."""
    settings = Settings(
        config=tmp_path / "missing.yaml",
        redis_url=SecretStr(f"redis://:{PASSWORD}@h:99999"),
        cache_keys=SecretStr(new_cache_key()),
    )
    with pytest.raises(ConfigError) as caught:
        load_checked(settings)
    problems = caught.value.problems
    assert any(p.startswith("TOKEN_BROKER_REDIS_URL: ") and "port" in p for p in problems), problems
    assert PASSWORD not in "\n".join(problems)


def test_ca_file_problems(tmp_path: Path) -> None:
    """A CA file must exist, hold a PEM certificate, and come with a TLS URL."""
    ca, _ = make_ca(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert redis_ca_file_problem(None, "redis://h") is None
    assert redis_ca_file_problem(ca, "rediss://h") is None
    assert redis_ca_file_problem(ca, "rediss+sentinel://s/m") is None
    assert "not TLS" in (redis_ca_file_problem(ca, "redis://h") or "")
    assert "not TLS" in (redis_ca_file_problem(ca, "redis+sentinel://s/m") or "")
    assert "does not exist" in (redis_ca_file_problem(tmp_path / "nope.pem", "rediss://h") or "")
    assert "no readable PEM" in (redis_ca_file_problem(junk, "rediss://h") or "")


def _settings(url: str, **overrides: Any) -> Settings:
    return Settings(redis_url=SecretStr(url), cache_keys=SecretStr(new_cache_key()), **overrides)


async def test_plain_and_tls_clients_are_wired_from_the_url(tmp_path: Path) -> None:
    """redis:// and rediss:// build a blocking pool; TLS always verifies, with the CA file."""
    ca, _ = make_ca(tmp_path)
    plain = connect_redis(_settings(f"redis://u:{PASSWORD}@h:6380/4", redis_timeout_seconds=0.7))
    tls = connect_redis(_settings("rediss://h", redis_ca_file=ca))
    try:
        kwargs = plain.connection_pool.connection_kwargs
        assert plain.connection_pool.connection_class is Connection
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h", 6380, 4)
        assert (kwargs["username"], kwargs["password"]) == ("u", PASSWORD)
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.7
        assert not any(name.startswith("ssl") for name in kwargs)
        kwargs = tls.connection_pool.connection_kwargs
        assert tls.connection_pool.connection_class is SSLConnection
        assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert kwargs["ssl_check_hostname"] is True
        assert kwargs["ssl_ca_certs"] == str(ca)
    finally:
        await plain.aclose(close_connection_pool=True)
        await tls.aclose(close_connection_pool=True)


async def test_sentinel_client_is_wired_from_the_url(tmp_path: Path) -> None:
    """redis+sentinel:// asks the listed sentinels for the master; credentials go to the
    master, and to the sentinels only with sentinel_auth=yes; rediss+ uses TLS for both."""
    ca, _ = make_ca(tmp_path)
    plain = connect_redis(_settings(f"redis+sentinel://:{PASSWORD}@s1,s2:26380/m/1"))
    tls = connect_redis(
        _settings(
            f"rediss+sentinel://:{PASSWORD}@s1/m?sentinel_auth=yes",
            redis_ca_file=ca,
            redis_timeout_seconds=0.5,
        )
    )
    try:
        pool: Any = plain.connection_pool
        assert pool.service_name == "m"
        assert pool.connection_class is SentinelManagedConnection
        assert pool.connection_kwargs["password"] == PASSWORD
        assert pool.connection_kwargs["db"] == 1
        sentinels = pool.sentinel_manager.sentinels
        addresses = [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["port"],
            )
            for s in sentinels
        ]
        assert addresses == [("s1", 26379), ("s2", 26380)]
        assert all(s.connection_pool.connection_kwargs.get("password") is None for s in sentinels)

        pool = tls.connection_pool
        assert pool.connection_class is SentinelManagedSSLConnection
        assert pool.connection_kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
        sentinel_kwargs = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
        assert sentinel_kwargs["password"] == PASSWORD
        assert sentinel_kwargs["ssl_check_hostname"] is True
        assert sentinel_kwargs["ssl_ca_certs"] == str(ca)
        assert sentinel_kwargs["socket_timeout"] == 0.5
    finally:
        await plain.aclose(close_connection_pool=True)
        await tls.aclose(close_connection_pool=True)
