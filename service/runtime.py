"""Wiring: turn settings and the validated config into a running broker.

Kept apart from ``api/`` so the CLI and tests can build the same objects; it is the only
place that knows which adapter backs which protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from service.broker import Broker, TokenCache
from service.cache.connection import connect_redis
from service.cache.crypto import CacheKeyError, TokenCipher, parse_cache_keys
from service.cache.memory import MemoryTokenCache, TieredTokenCache
from service.cache.redis import RedisRefreshLock, RedisTokenCache
from service.callers.api_keys import ApiKeyAuthenticator
from service.callers.authenticator import Authenticator
from service.callers.jwks import JwksKeySource
from service.callers.jwt import WorkloadAuthenticator
from service.config import BrokerConfig, load_config
from service.errors import ConfigError
from service.models import Caller
from service.settings import Settings
from service.upstream.exchange import UpstreamTokenSource

log = logging.getLogger("token_broker")


def load_checked(settings: Settings) -> BrokerConfig:
    """The broker YAML plus the settings it depends on, every problem reported at once."""
    problems: list[str] = []
    config: BrokerConfig | None = None
    try:
        config = load_config(settings.config, allow_inline_secrets=settings.allow_inline_secrets)
    except ConfigError as exc:
        problems += exc.problems
    if settings.redis_url is not None:
        if settings.cache_keys is None:
            problems.append(
                "TOKEN_BROKER_CACHE_KEYS (or _FILE): required with TOKEN_BROKER_REDIS_URL, "
                "tokens are encrypted at rest"
            )
        else:
            try:
                parse_cache_keys(settings.cache_keys.get_secret_value())
            except CacheKeyError as exc:
                problems.append(f"TOKEN_BROKER_CACHE_KEYS: {exc}")
    if problems or config is None:
        raise ConfigError(problems)
    return config


@dataclass
class Runtime:
    """Everything a request needs, built once per process."""

    settings: Settings
    config: BrokerConfig
    broker: Broker
    callers: Authenticator
    source: UpstreamTokenSource
    keys: JwksKeySource | None = None
    redis: Redis | None = None
    clock: Callable[[], float] = time.time

    async def ready(self) -> dict[str, str]:
        """Dependency states; ``ok`` everywhere means ready."""
        checks = {"config": "ok", "cache": "memory"}
        if self.redis is not None:
            try:
                await self.redis.ping()
                checks["cache"] = "ok"
            except Exception:  # noqa: BLE001 - any failure means not ready
                checks["cache"] = "unreachable"
        return checks

    async def aclose(self) -> None:
        """Stop background work and close connections."""
        await self.broker.aclose()
        await self.source.aclose()
        if self.keys is not None:
            await self.keys.aclose()
        if self.redis is not None:
            await self.redis.aclose(close_connection_pool=True)


def build_runtime(
    settings: Settings, config: BrokerConfig, *, clock: Callable[[], float] = time.time
) -> Runtime:
    """Assemble adapters for ``settings``; call inside the event loop that will use them."""
    source = UpstreamTokenSource(
        config.profiles, timeout=settings.upstream_timeout_seconds, clock=clock
    )
    local = MemoryTokenCache(clock=clock)
    redis: Redis | None = None
    cache: TokenCache = local
    lock = None
    if settings.redis_url is not None:
        assert settings.cache_keys is not None  # load_checked guarantees it
        redis = connect_redis(settings)
        cipher = TokenCipher(parse_cache_keys(settings.cache_keys.get_secret_value()))
        cache = TieredTokenCache(
            local,
            RedisTokenCache(redis, cipher),
            refresh_fraction=settings.refresh_fraction,
            clock=clock,
        )
        lock = RedisRefreshLock(redis, settings.lock_lease_seconds)
    else:
        log.warning(
            "TOKEN_BROKER_REDIS_URL is unset: tokens are cached in this process only; "
            "run a single replica"
        )
    broker = Broker(
        cache=cache,
        source=source,
        lock=lock,
        profiles={name: p.identity for name, p in config.profiles.items()},
        clock=clock,
        refresh_fraction=settings.refresh_fraction,
        max_skew=settings.max_skew_seconds,
        wait_timeout=settings.wait_timeout_seconds,
    )
    callers = {
        name: Caller(name=name, roles=frozenset(spec.roles))
        for name, spec in config.callers.items()
    }
    keys = workloads = None
    if config.trusted_issuers:
        keys = JwksKeySource(
            config.trusted_issuers,
            timeout=settings.upstream_timeout_seconds,
            max_age=settings.jwks_max_age_seconds,
            min_refresh_interval=settings.jwks_min_refresh_seconds,
        )
        workloads = WorkloadAuthenticator(
            config.trusted_issuers, config.workloads, callers, keys, clock=clock
        )
    return Runtime(
        settings=settings,
        config=config,
        broker=broker,
        callers=Authenticator(ApiKeyAuthenticator(config.api_keys, callers), workloads),
        source=source,
        keys=keys,
        redis=redis,
        clock=clock,
    )
