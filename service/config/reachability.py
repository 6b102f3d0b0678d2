"""``check-config --connect``: can this broker reach its Redis and its issuers from here?

Each target gets one bounded attempt and one report line. Nothing secret is sent or printed:
Redis is only PINGed (with the URL's credentials, which never appear in a line), issuers get
a discovery GET and an empty POST to the token endpoint, so no client secret leaves.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
from redis.asyncio.sentinel import SentinelConnectionPool

from service.store.connection import connect_redis, describe_redis_target, parse_redis_url
from service.store.redis import failure_reason

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from service.config.settings import Settings
    from service.config.validated import BrokerConfig, Profile

TIMEOUT_SECONDS = 5.0
_MAX_DETAIL = 200


@dataclass(frozen=True)
class Reach:
    """The outcome for one target: ``what`` (redis, discovery, token_endpoint) at ``where``."""

    ok: bool
    what: str
    where: str
    detail: str

    def line(self) -> str:
        """``ok   what where (detail)`` or ``FAIL what where: detail``."""
        if self.ok:
            return f"ok   {self.what} {self.where} ({self.detail})"
        return f"FAIL {self.what} {self.where}: {self.detail}"


def check_all(settings: Settings, config: BrokerConfig) -> list[Reach]:
    """Try Redis (when configured) and every profile's issuer; one result per target."""
    return asyncio.run(_check_all(settings, config))


async def _check_all(settings: Settings, config: BrokerConfig) -> list[Reach]:
    results: list[Reach] = []
    if settings.redis_url is not None:
        results.append(await check_redis(settings))
    async with httpx2.AsyncClient(timeout=TIMEOUT_SECONDS) as http:
        for profile in config.profiles.values():
            results += await check_profile(http, profile)
    return results


async def check_redis(settings: Settings) -> Reach:
    """PING Redis; with Sentinel, first ask the sentinels which node is master."""
    assert settings.redis_url is not None
    target = parse_redis_url(settings.redis_url.get_secret_value())
    where = describe_redis_target(target)
    hide = tuple(s for s in (target.password, target.username) if s)
    bounded = settings.model_copy(
        update={"redis_timeout_seconds": min(settings.redis_timeout_seconds, TIMEOUT_SECONDS)}
    )
    client = connect_redis(bounded)
    try:
        pool = client.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            host, port = await asyncio.wait_for(
                pool.sentinel_manager.discover_master(target.service_name), TIMEOUT_SECONDS
            )
            where += f" -> {host}:{port}"
        started = time.perf_counter()
        await asyncio.wait_for(client.ping(), TIMEOUT_SECONDS)
        elapsed = (time.perf_counter() - started) * 1000
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
        return Reach(ok=False, what="redis", where=where, detail=failure_reason(exc, hide=hide))
    finally:
        await client.aclose(close_connection_pool=True)
    return Reach(ok=True, what="redis", where=where, detail=f"PING {elapsed:.1f} ms")


async def check_profile(http: httpx2.AsyncClient, profile: Profile) -> list[Reach]:
    """Discovery (unless the profile names its token endpoint), then the token endpoint."""
    label = f"profile {profile.name}"
    endpoint = profile.spec.token_endpoint
    results: list[Reach] = []
    if endpoint is None:
        if profile.issuer is None:
            return []
        url = f"{profile.issuer.rstrip('/')}/.well-known/openid-configuration"
        found, discovery = await _discover(http, url)
        results.append(Reach(found is not None, "discovery", f"{label} {_shown(url)}", discovery))
        if found is None:
            return results
        endpoint = found
    results.append(await _token_endpoint(http, endpoint, label))
    return results


async def _discover(http: httpx2.AsyncClient, url: str) -> tuple[str | None, str]:
    """The token endpoint the document names, or None; and what to report."""
    try:
        response, ms = await _timed(lambda: http.get(url, headers={"Accept": "application/json"}))
    except (httpx2.HTTPError, TimeoutError) as exc:
        return None, _http_failure(exc)
    if response.status_code != 200:  # noqa: PLR2004
        return None, f"HTTP {response.status_code}, expected 200 with the discovery document"
    try:
        document: Any = response.json()
    except ValueError:
        return None, "HTTP 200 but not JSON"
    endpoint = document.get("token_endpoint") if isinstance(document, dict) else None
    if not isinstance(endpoint, str) or not endpoint:
        return None, "HTTP 200 but the document has no token_endpoint"
    return endpoint, f"HTTP 200, {ms:.1f} ms"


async def _token_endpoint(http: httpx2.AsyncClient, url: str, label: str) -> Reach:
    # An empty form: any HTTP answer (typically 400 or 401) proves the endpoint is there,
    # and no credential is sent.
    where = f"{label} {_shown(url)}"
    try:
        response, ms = await _timed(lambda: http.post(url, data={}))
    except (httpx2.HTTPError, TimeoutError) as exc:
        return Reach(ok=False, what="token_endpoint", where=where, detail=_http_failure(exc))
    detail = f"HTTP {response.status_code}, {ms:.1f} ms"
    return Reach(ok=True, what="token_endpoint", where=where, detail=detail)


async def _timed(
    request: Callable[[], Awaitable[httpx2.Response]],
) -> tuple[httpx2.Response, float]:
    started = time.perf_counter()
    response = await asyncio.wait_for(request(), TIMEOUT_SECONDS * 2)
    return response, (time.perf_counter() - started) * 1000


def _http_failure(exc: BaseException) -> str:
    # httpx messages may repeat the URL, which may hold userinfo: report the class chain only.
    root = exc
    while (inner := root.__cause__ or root.__context__) is not None and inner is not root:
        root = inner
    if root is exc:
        return type(exc).__name__
    return f"{type(exc).__name__} ({type(root).__name__})"


def _shown(url: str) -> str:
    """``url`` without userinfo, query or fragment: those may carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
