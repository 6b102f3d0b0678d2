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
from service.cache.connection import connect_redis, redis_ca_file_problem, redis_url_problem
from service.cache.crypto import CacheKeyError, TokenCipher, parse_cache_keys
from service.cache.memory import MemoryTokenCache, TieredTokenCache
from service.cache.redis import RedisHealth, RedisRefreshLock, RedisTokenCache
from service.callers.api_keys import ApiKeyAuthenticator
from service.callers.authenticator import Authenticator
from service.callers.jwks import JwksKeySource
from service.callers.jwt import WorkloadAuthenticator
from service.config import BrokerConfig, load_config
from service.errors import ConfigError
from service.models import Caller
from service.ratelimit import AuthFailureThrottle, CallerRateLimit
from service.resilience import Backoff
from service.settings import Settings
from service.upstream.exchange import UpstreamTokenSource
from service.upstream.resilient import ResilientTokenSource

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
        url = settings.redis_url.get_secret_value()
        if (problem := redis_url_problem(url)) is not None:
            problems.append(f"TOKEN_BROKER_REDIS_URL: {problem}")
        if (problem := redis_ca_file_problem(settings.redis_ca_file, url)) is not None:
            problems.append(f"TOKEN_BROKER_REDIS_CA_FILE: {problem}")
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
    resilient: ResilientTokenSource
    keys: JwksKeySource | None = None
    redis: Redis | None = None
    redis_health: RedisHealth | None = None
    rate_limit: CallerRateLimit | None = None
    auth_throttle: AuthFailureThrottle | None = None
    clock: Callable[[], float] = time.time

    async def ready(self) -> dict[str, str]:
        """Dependency states: ``ok``, ``memory`` (no Redis configured) or ``degraded``.

        A degraded Redis does not make the broker unready: it keeps serving from its
        in-process cache, so taking it out of rotation would only lose capacity.
        """
        checks = {"config": "ok", "cache": "memory"}
        if self.redis is not None and self.redis_health is not None:
            try:
                # A real ping, not the skip-while-down path: readiness probes drive recovery.
                await self.redis.ping()
            except Exception as exc:  # noqa: BLE001 - any failure means degraded
                self.redis_health.failed(exc)
            else:
                self.redis_health.succeeded()
            checks["cache"] = "ok" if self.redis_health.up else "degraded"
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
    health: RedisHealth | None = None
    cache: TokenCache = local
    lock = None
    if settings.redis_url is not None:
        assert settings.cache_keys is not None  # load_checked guarantees it
        redis = connect_redis(settings)
        cipher = TokenCipher(parse_cache_keys(settings.cache_keys.get_secret_value()))
        health = RedisHealth(probe_interval=settings.redis_probe_seconds)
        cache = TieredTokenCache(
            local,
            RedisTokenCache(redis, cipher, health),
            refresh_fraction=settings.refresh_fraction,
            clock=clock,
        )
        lock = RedisRefreshLock(redis, settings.lock_lease_seconds, health)
    else:
        log.warning(
            "TOKEN_BROKER_REDIS_URL is unset: tokens are cached in this process only; "
            "run a single replica"
        )
    resilient = ResilientTokenSource(
        source,
        attempts=settings.upstream_attempts,
        deadline=settings.upstream_deadline_seconds,
        backoff=Backoff(
            settings.upstream_backoff_base_seconds, settings.upstream_backoff_max_seconds
        ),
        failure_threshold=settings.circuit_failure_threshold,
        reset_after=settings.circuit_reset_seconds,
    )
    broker = Broker(
        cache=cache,
        source=resilient,
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
        resilient=resilient,
        keys=keys,
        redis=redis,
        redis_health=health,
        rate_limit=CallerRateLimit(settings.rate_limit_per_minute, redis=redis, health=health),
        auth_throttle=AuthFailureThrottle(settings.auth_failures_per_minute),
        clock=clock,
    )
