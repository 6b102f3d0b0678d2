"""Wiring: turn settings and the validated config into a running broker.

Kept apart from ``api/`` so the CLI and tests can build the same objects; it is the only
place that knows which adapter backs which protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis

from service.callers.api_keys import ApiKeyAuthenticator
from service.callers.authenticator import Authenticator
from service.callers.jwks import JwksKeySource
from service.callers.jwt import WorkloadAuthenticator
from service.callers.replay import UsedJtis
from service.config.load import load_config, parse_issuer_budget
from service.config.settings import Settings
from service.config.validated import BrokerConfig
from service.core.broker import Broker, RefreshLock, TokenCache
from service.core.handout import Handout
from service.errors import ConfigError
from service.models import Caller
from service.observe import audit, metrics
from service.store.budget import IssuerBudget
from service.store.connection import (
    connect_redis,
    describe_redis_target,
    parse_redis_url,
    redis_ca_file_problem,
    redis_url_problem,
)
from service.store.crypto import CacheKeyError, TokenCipher, parse_cache_keys
from service.store.memory import MemoryTokenCache, TieredTokenCache
from service.store.ratelimit import AuthFailureThrottle, CallerRateLimit
from service.store.redis import (
    RedisHealth,
    RedisRefreshLock,
    RedisTokenCache,
    listen_for_invalidations,
)
from service.tasks import finish_or_cancel
from service.upstream.exchange import UpstreamTokenSource
from service.upstream.minted import MintedProfile, Minter
from service.upstream.resilience import Backoff
from service.upstream.resilient import ResilientTokenSource

log = logging.getLogger("token_broker")
SHUTDOWN_STEP_SECONDS = 5.0


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
                "tokens are encrypted at rest; `token-broker new-cache-key` prints a key"
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
class Generation:
    """Everything derived from the broker YAML; replaced as a whole when the YAML changes."""

    config: BrokerConfig
    broker: Broker
    callers: Authenticator
    source: UpstreamTokenSource
    keys: JwksKeySource | None
    loaded_at: float
    # The use case over this generation, built once: a request only calls it, so a reload
    # mid-request never mixes an old policy with a new broker, and nothing is built per request.
    handout: Handout

    async def aclose(self) -> None:
        """Stop its background work and close its connections."""
        await self.broker.aclose()
        await self.source.aclose()
        if self.keys is not None:
            await self.keys.aclose()


@dataclass
class Shared:
    """What outlives a reload: caches, Redis, limits, the issuer circuit breakers."""

    settings: Settings
    clock: Callable[[], float]
    cache: TokenCache
    lock: RefreshLock | None
    resilient: ResilientTokenSource
    rate_limit: CallerRateLimit
    # Limits follow the YAML on reload; the shares leased from Redis stay.
    issuer_budget: IssuerBudget
    auth_throttle: AuthFailureThrottle
    # Outlives reloads: a used assertion must stay used whatever the YAML becomes.
    used_jtis: UsedJtis
    redis: Redis | None = None
    redis_health: RedisHealth | None = None
    redis_cache: RedisTokenCache | None = None


class Runtime:
    """Everything a request needs: built once per process, its configuration reloadable.

    Requests read ``generation`` once and use what it holds, so a reload swaps it in one
    assignment; requests already running finish on the generation they started
    with, which is closed only after they have had time to finish.
    """

    def __init__(self, shared: Shared, generation: Generation) -> None:
        self.shared = shared
        self.generation = generation
        self._tasks: set[asyncio.Task[None]] = set()
        self._fingerprints = self._watched()
        self._reloading = asyncio.Lock()
        self._retiring: list[Generation] = []
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Start background work: cross-replica invalidations and the reload watcher."""
        cache = self.shared.cache
        if self.shared.redis is not None and self.shared.redis_health is not None:
            self._spawn(self._reach_redis(self.shared.redis, self.shared.redis_health))
        if self.shared.redis is not None and isinstance(cache, TieredTokenCache):
            self._spawn(
                listen_for_invalidations(
                    self.shared.redis,
                    cache.drop_local,
                    stop=self._stopping,
                    retry_seconds=self.shared.settings.redis_probe_seconds,
                )
            )
        if self.shared.settings.reload_seconds > 0:
            self._spawn(self._watch())

    async def _reach_redis(self, redis: Redis, health: RedisHealth) -> None:
        """PING Redis now and every probe interval until it first answers.

        Otherwise a wrong host or port would stay silent until the first request. The broker
        serves meanwhile: a pod restarted during a Redis outage must still become ready.
        """
        while not health.reached and not self._stopping.is_set():
            try:
                await asyncio.wait_for(
                    redis.ping(), timeout=self.shared.settings.redis_timeout_seconds
                )
            except Exception as exc:  # noqa: BLE001 - any failure means not reached yet
                health.failed(exc)
            else:
                health.succeeded()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.shared.settings.redis_probe_seconds
                )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ready(self) -> dict[str, str]:
        """Dependency states: ``ok``, ``memory`` (no Redis configured) or ``degraded``.

        While degraded, ``redis_detail`` says ``never reached`` (since start) or ``lost``.

        A degraded Redis does not make the broker unready: it keeps serving from its
        in-process cache, so taking it out of rotation would only lose capacity.
        """
        checks = {"config": "ok", "cache": "memory"}
        redis, health = self.shared.redis, self.shared.redis_health
        if redis is not None and health is not None:
            try:
                # A real ping, not the skip-while-down path: readiness probes drive recovery.
                await redis.ping()
            except Exception as exc:  # noqa: BLE001 - any failure means degraded
                health.failed(exc)
            else:
                health.succeeded()
            checks["cache"] = "ok" if health.up else "degraded"
            if not health.up:
                # Tells a typo in the URL (never reached) from an outage (lost).
                checks["redis_detail"] = "lost" if health.reached else "never reached"
        return checks

    def _watched(self) -> tuple[str, ...]:
        # Content, not mtime: a Kubernetes volume update swaps a symlink, and editors may
        # rewrite a file within the same second.
        paths = [self.shared.settings.config]
        if self.shared.settings.cache_keys_file is not None:
            paths.append(self.shared.settings.cache_keys_file)
        return tuple(_digest(path) for path in paths)

    async def _watch(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.shared.settings.reload_seconds)
                return
            current = await asyncio.to_thread(self._watched)
            if current != self._fingerprints:
                await self.reload("file changed")

    async def reload(self, reason: str) -> bool:
        """Re-read the broker YAML and the cache keys; keep the old ones if anything is wrong.

        Returns whether the new configuration is in force.
        """
        async with self._reloading:
            self._fingerprints = await asyncio.to_thread(self._watched)
            settings = self.shared.settings
            try:
                config = await asyncio.to_thread(load_checked, _with_fresh_files(settings))
                cipher = _cipher(_with_fresh_files(settings))
            except ConfigError as exc:
                metrics.config_reloads.labels("rejected").inc()
                log.error(  # noqa: TRY400 - the problems say it all; a traceback would not
                    "configuration reload rejected; the previous configuration stays in force",
                    extra={"reason": reason, "problems": exc.problems},
                )
                return False
            old = self.generation
            self.generation = _generation(self.shared, config)
            if cipher is not None and self.shared.redis_cache is not None:
                self.shared.redis_cache.use_cipher(cipher)
            self.shared.resilient.reset()
            metrics.config_reloads.labels("applied").inc()
            log.warning(
                "configuration reloaded",
                extra={
                    "reason": reason,
                    "profiles": len(config.profiles),
                    "callers": len(config.callers),
                },
            )
            self._spawn(self._retire(old))
            return True

    async def _retire(self, old: Generation) -> None:
        # Requests that started on the old generation may still be waiting on an exchange.
        self._retiring.append(old)
        await asyncio.sleep(self.shared.settings.wait_timeout_seconds)
        self._retiring.remove(old)
        await old.aclose()

    async def aclose(self) -> None:
        """Stop background work and close connections."""
        self._stopping.set()
        # The invalidation listener ends by itself within one poll when told to stop.
        await finish_or_cancel(
            self._tasks, grace=SHUTDOWN_STEP_SECONDS / 2, after_cancel=SHUTDOWN_STEP_SECONDS
        )
        for generation in [*self._retiring, self.generation]:
            await _bounded(generation.aclose(), "close configuration generation")
        await _bounded(self.shared.rate_limit.aclose(), "finish rate-limit leases")
        await _bounded(self.shared.issuer_budget.aclose(), "finish issuer-budget leases")
        if self.shared.redis is not None:
            await _bounded(self.shared.redis.aclose(close_connection_pool=True), "close redis")


async def _bounded(step: Coroutine[Any, Any, None], what: str) -> None:
    try:
        await asyncio.wait_for(step, timeout=SHUTDOWN_STEP_SECONDS)
    except TimeoutError:
        log.warning("shutdown step timed out", extra={"step": what})


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def _with_fresh_files(settings: Settings) -> Settings:
    """``settings`` with its ``*_FILE`` secrets read again (they may have been rotated)."""
    if settings.cache_keys_file is None:
        return settings
    try:
        text = settings.cache_keys_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        problem = f"TOKEN_BROKER_CACHE_KEYS_FILE: cannot read it ({exc.strerror})"
        raise ConfigError([problem]) from None
    return settings.model_copy(update={"cache_keys": SecretStr(text)})


def _cipher(settings: Settings) -> TokenCipher | None:
    if settings.redis_url is None or settings.cache_keys is None:
        return None
    try:
        return TokenCipher(parse_cache_keys(settings.cache_keys.get_secret_value()))
    except CacheKeyError as exc:
        raise ConfigError([f"TOKEN_BROKER_CACHE_KEYS: {exc}"]) from None


def _generation(shared: Shared, config: BrokerConfig) -> Generation:
    settings, clock = shared.settings, shared.clock
    source = UpstreamTokenSource(
        config.profiles, timeout=settings.upstream_timeout_seconds, clock=clock
    )
    shared.resilient.inner = source
    shared.issuer_budget.set_limits(_issuer_budgets(config))
    broker = Broker(
        cache=shared.cache,
        source=shared.resilient,
        lock=shared.lock,
        profiles={name: p.identity for name, p in config.profiles.items()},
        clock=clock,
        refresh_fraction=settings.refresh_fraction,
        max_skew=settings.max_skew_seconds,
        wait_timeout=settings.wait_timeout_seconds,
        on_waiters=metrics.singleflight_waiters.set,
        budget=shared.issuer_budget,
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
            config.trusted_issuers,
            config.workloads,
            callers,
            keys,
            used_jtis=shared.used_jtis,
            # No longer than the key cache: a key withdrawn from the JWKS stops vouching for
            # already verified tokens too, once its absence has been seen.
            remember_for=settings.jwks_max_age_seconds,
            clock=clock,
        )
    minter = None
    if config.signing is not None:
        minted = {
            name: MintedProfile(audience=p.spec.audience, email_domain=p.spec.email_domain)
            for name, p in config.profiles.items()
            if p.spec.provider == "broker"
        }
        minter = Minter(
            issuer=config.signing.issuer,
            key=config.signing.keys[0],
            profiles=minted,
            fallback=broker,
            clock=clock,
        )
    handout = Handout(
        rate_limit=shared.rate_limit,
        policy=config.policy,
        # The minter when the YAML has ``signing:`` (it hands other profiles to the broker).
        broker=minter if minter is not None else broker,
        known_scopes=_known_scopes(config),
        audit=audit.record,
        meter=_METER,
        clock=clock,
    )
    return Generation(
        handout=handout,
        config=config,
        broker=broker,
        callers=Authenticator(ApiKeyAuthenticator(config.api_keys, callers), workloads),
        source=source,
        keys=keys,
        loaded_at=time.time(),
    )


class _Meter:
    """The hand-out's metrics on the process's Prometheus registry."""

    __slots__ = ()

    def handed_out(self, profile: str, outcome: str) -> None:
        metrics.labelled(metrics.handouts, profile, outcome).inc()

    def remaining_life(self, profile: str, seconds: float) -> None:
        metrics.labelled(metrics.remaining_life, profile).observe(seconds)


_METER = _Meter()


def _known_scopes(config: BrokerConfig) -> Callable[[str], Collection[str] | None]:
    def known_scopes(name: str) -> Collection[str] | None:
        profile = config.profiles.get(name)
        return profile.spec.scopes if profile is not None else None

    return known_scopes


def _issuer_budgets(config: BrokerConfig) -> dict[str, int]:
    # Profiles the broker signs for itself (provider broker) never reach an issuer.
    return {
        name: parse_issuer_budget(profile.spec.issuer_budget)
        for name, profile in config.profiles.items()
        if profile.spec.provider != "broker"
    }


def _issuer_budget(redis: Redis | None, health: RedisHealth | None) -> IssuerBudget:
    """The issuer budget on the rate limit's Redis; a refusal is counted and audited."""

    async def exceeded(profile: str) -> None:
        metrics.labelled(metrics.issuer_budget_exceeded, profile).inc()
        await audit.budget_exceeded(profile, budget.limit(profile))

    budget = IssuerBudget({}, redis=redis, health=health, on_exceeded=exceeded)
    return budget


def build_runtime(
    settings: Settings, config: BrokerConfig, *, clock: Callable[[], float] = time.time
) -> Runtime:
    """Assemble adapters for ``settings``; call inside the event loop that will use them."""
    local = MemoryTokenCache(clock=clock)
    redis: Redis | None = None
    health: RedisHealth | None = None
    redis_cache: RedisTokenCache | None = None
    cache: TokenCache = local
    lock: RefreshLock | None = None
    cipher = _cipher(settings)
    if settings.redis_url is not None:
        assert cipher is not None  # load_checked guarantees cache keys with Redis
        redis = connect_redis(settings)
        target = parse_redis_url(settings.redis_url.get_secret_value())
        health = RedisHealth(
            probe_interval=settings.redis_probe_seconds,
            target=describe_redis_target(target),
            hide=tuple(s for s in (target.password, target.username) if s),
        )
        redis_cache = RedisTokenCache(redis, cipher, health)
        tiered = TieredTokenCache(
            local,
            redis_cache,
            refresh_fraction=settings.refresh_fraction,
            clock=clock,
            shared_up=lambda: health.up,
        )
        cache = tiered
        lock = RedisRefreshLock(redis, settings.lock_lease_seconds, health)
    else:
        log.warning(
            "TOKEN_BROKER_REDIS_URL is unset: tokens are cached in this process only; "
            "run a single replica"
        )
    resilient = ResilientTokenSource(
        None,
        attempts=settings.upstream_attempts,
        deadline=settings.upstream_deadline_seconds,
        backoff=Backoff(
            settings.upstream_backoff_base_seconds, settings.upstream_backoff_max_seconds
        ),
        failure_threshold=settings.circuit_failure_threshold,
        reset_after=settings.circuit_reset_seconds,
    )
    shared = Shared(
        settings=settings,
        clock=clock,
        cache=cache,
        lock=lock,
        resilient=resilient,
        rate_limit=CallerRateLimit(settings.rate_limit_per_minute, redis=redis, health=health),
        issuer_budget=_issuer_budget(redis, health),
        auth_throttle=AuthFailureThrottle(settings.auth_failures_per_minute),
        used_jtis=UsedJtis(redis=redis, health=health, clock=clock),
        redis=redis,
        redis_health=health,
        redis_cache=redis_cache,
    )
    return Runtime(shared, _generation(shared, config))
