"""The use case: hand out a token for a grant, fetching from the issuer as rarely as possible.

``Broker.issue`` serves from the cache when a token has enough life left, refreshes ahead
of expiry in the background, and collapses concurrent misses into one exchange per
process (an asyncio future per key) and one across replicas (the ``RefreshLock``).
Adapters for the cache, the lock and the issuer implement the protocols below; this
module imports no framework, no Redis and no HTTP client.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from service.errors import TokenLifetimeTooShort, UpstreamUnavailable
from service.models import Grant, Issued, IssuedToken
from service.tasks import finish_or_cancel

log = logging.getLogger("token_broker.broker")

Clock = Callable[[], float]
MAX_SEEN = 1024
# How long shutdown lets exchanges in flight finish before cancelling them.
CLOSE_GRACE_SECONDS = 1.0
Accept = Callable[[IssuedToken], bool]


class TokenCache(Protocol):
    """Where tokens live between exchanges."""

    async def get(self, key: str) -> IssuedToken | None:
        """The token stored under ``key``, or ``None``."""

    async def put(self, key: str, token: IssuedToken, ttl: float) -> None:
        """Store ``token`` under ``key`` for ``ttl`` seconds."""

    async def invalidate(self, prefix: str) -> None:
        """Drop every token whose key starts with ``prefix`` (in every replica it reaches)."""


class RefreshLock(Protocol):
    """A lease that lets one replica at a time talk to the issuer for a key."""

    async def acquire(self, key: str) -> str | None:
        """A lease id when acquired, ``None`` when another holder has it."""

    async def release(self, key: str, lease: str) -> None:
        """Give the lease back if it is still ours."""


class TokenSource(Protocol):
    """The issuer side: one client-credentials exchange."""

    async def fetch(self, profile: str, scopes: tuple[str, ...]) -> IssuedToken:
        """A fresh token for ``profile`` carrying ``scopes``."""


class ExchangeBudget(Protocol):
    """How many exchanges a profile may make: the issuer's protection, not the broker's."""

    async def spend(self, profile: str) -> None:
        """Count one exchange; raise ``UpstreamUnavailable`` (503) when over the budget."""


class Unlimited:
    """No issuer budget (tests and single-purpose tools)."""

    async def spend(self, profile: str) -> None:
        """Always allowed."""
        del profile


class LocalOnlyLock:
    """The lock for a single replica: the in-process single-flight is all it needs."""

    async def acquire(self, key: str) -> str | None:
        """Always granted."""
        del key
        return "local"

    async def release(self, key: str, lease: str) -> None:
        """Nothing to release."""


class Broker:
    """Issues tokens for grants over a cache, a cross-replica lock and an issuer."""

    def __init__(
        self,
        *,
        cache: TokenCache,
        source: TokenSource,
        profiles: Mapping[str, str],
        lock: RefreshLock | None = None,
        clock: Clock = time.time,
        refresh_fraction: float = 2 / 3,
        max_skew: float = 30.0,
        wait_timeout: float = 15.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_waiters: Callable[[int], None] | None = None,
        budget: ExchangeBudget | None = None,
    ) -> None:
        self._cache = cache
        # Told the number of requests waiting on another's exchange (a metrics gauge).
        self._on_waiters = on_waiters or (lambda _: None)
        self._waiting = 0
        self._source = source
        self._budget = budget or Unlimited()
        # profile name -> stable identity of the OIDC client (issuer, client id, audience...).
        self._profiles = profiles
        self._lock = lock or LocalOnlyLock()
        self._clock = clock
        self._refresh_fraction = refresh_fraction
        self._max_skew = max_skew
        self._wait_timeout = wait_timeout
        self._sleep = sleep
        self._flights: dict[str, asyncio.Future[Issued]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # (profile, scopes) behind each key handed out here: for the admin view only.
        self._seen: dict[str, tuple[str, tuple[str, ...]]] = {}
        # key -> time before which no new background refresh starts (after one failed).
        self._refresh_paused: dict[str, float] = {}
        # (profile, scopes) -> cache key: two SHA-256 per request otherwise.
        self._keys: dict[tuple[str, tuple[str, ...]], str] = {}
        # Profile identity -> lifetime of its latest token seen here. Kept after the token
        # leaves the cache, so a min_ttl the issuer cannot meet is refused without asking it.
        self._lifetimes: dict[str, float] = {}

    def key_for(self, profile: str, scopes: tuple[str, ...]) -> str:
        """Cache key of a token: ``<profile prefix><hash of identity and sorted scopes>``.

        Both parts are hashes, so a key reveals neither the client nor the scopes; the
        prefix lets one profile's tokens be dropped together (``invalidate``).
        """
        memo = self._keys.get((profile, scopes))
        if memo is not None:
            return memo
        material = f"{self._profiles[profile]}\n{' '.join(sorted(scopes))}"
        key = self.prefix_for(profile) + hashlib.sha256(material.encode()).hexdigest()[:32]
        if len(self._keys) < MAX_SEEN:
            self._keys[(profile, scopes)] = key
        return key

    def prefix_for(self, profile: str) -> str:
        """The key prefix shared by every token of ``profile``."""
        return hashlib.sha256(self._profiles[profile].encode()).hexdigest()[:16] + ":"

    async def invalidate(self, profile: str) -> None:
        """Drop every cached token of ``profile``; the next request goes to the issuer."""
        await self._cache.invalidate(self.prefix_for(profile))

    async def cached(self, profile: str) -> list[tuple[tuple[str, ...], IssuedToken | None]]:
        """Scope sets of ``profile`` this replica has handed out, with their cached token."""
        seen = [scopes for (name, scopes) in self._seen.values() if name == profile]
        return [(scopes, await self._cache.get(self.key_for(profile, scopes))) for scopes in seen]

    def skew(self, token: IssuedToken) -> float:
        """Safety margin before expiry; a tenth of the life for short-lived tokens."""
        return min(self._max_skew, token.lifetime / 10)

    async def issue(self, grant: Grant) -> Issued:
        """A token for ``grant`` that lives at least ``grant.min_ttl`` seconds."""
        key = self.key_for(grant.profile, grant.scopes)
        if key not in self._seen and len(self._seen) < MAX_SEEN:
            self._seen[key] = (grant.profile, tuple(sorted(grant.scopes)))
        known = self._lifetimes.get(self._profiles[grant.profile])
        if known is not None:
            self._check_lifetime(grant, known)
        cached = await self._cache.get(key)
        if cached is not None:
            now = self._clock()
            if grant.min_ttl < cached.lifetime and self._usable(cached, now, grant.min_ttl):
                if now >= cached.refresh_at(self._refresh_fraction):
                    self._refresh_in_background(key, grant)
                return Issued(cached, "cache")
            self._learn(grant.profile, cached)
            self._check_lifetime(grant, cached.lifetime)
        # A joiner may receive a token fetched for a less demanding caller: then go again.
        for _ in range(3):
            issued = await self._single_flight(key, grant, self._acceptor(grant.min_ttl))
            self._check_lifetime(grant, issued.token.lifetime)
            if self._usable(issued.token, self._clock(), grant.min_ttl):
                return issued
            if issued.source == "issuer":
                # Fresh from the issuer and still too short (min_ttl equal to the lifetime):
                # asking again cannot help, so this is the caller's error, not an outage.
                raise TokenLifetimeTooShort(grant.profile, issued.token.lifetime, grant.min_ttl)
        raise UpstreamUnavailable("could not obtain a token with enough remaining life")

    async def aclose(self) -> None:
        """Let exchanges in flight end (bounded), then cancel the rest; used at shutdown."""
        # A refresh that ends still reaches the shared cache; and an exchange cancelled while
        # its HTTP client connects can leave that socket to the garbage collector.
        await finish_or_cancel(
            [*self._background, *self._flights.values()],
            grace=CLOSE_GRACE_SECONDS,
            after_cancel=CLOSE_GRACE_SECONDS,
        )

    def _usable(self, token: IssuedToken, now: float, min_ttl: int) -> bool:
        return token.remaining(now) >= max(min_ttl, self.skew(token))

    def _acceptor(self, min_ttl: int) -> Accept:
        return lambda token: self._usable(token, self._clock(), min_ttl)

    def _check_lifetime(self, grant: Grant, lifetime: float) -> None:
        # The issuer decides lifetimes, and a token is a moment old by the time it is handed
        # out: a min_ttl of the whole lifetime or more can never be met.
        if grant.min_ttl > 0 and lifetime <= grant.min_ttl:
            raise TokenLifetimeTooShort(grant.profile, lifetime, grant.min_ttl)

    def _learn(self, profile: str, token: IssuedToken) -> None:
        identity = self._profiles[profile]
        if identity in self._lifetimes or len(self._lifetimes) < MAX_SEEN:
            self._lifetimes[identity] = token.lifetime

    def _refresh_in_background(self, key: str, grant: Grant) -> None:
        if key in self._flights or self._clock() < self._refresh_paused.get(key, 0.0):
            return

        def fresh(token: IssuedToken) -> bool:
            # Another replica may have refreshed already: its token is past no refresh point.
            return self._clock() < token.refresh_at(self._refresh_fraction)

        async def refresh() -> None:
            try:
                await self._single_flight(key, grant, fresh)
            except Exception as exc:  # noqa: BLE001 - a failed refresh must not kill the loop
                # Every request past the refresh point would start another one: wait as long
                # as the failure says (an open circuit's Retry-After) before trying again.
                pause = float(getattr(exc, "retry_after", 1))
                self._refresh_paused[key] = self._clock() + pause
                if len(self._refresh_paused) > MAX_SEEN:
                    self._refresh_paused.clear()
                log.warning(
                    "background refresh failed",
                    extra={
                        "profile": grant.profile,
                        "error": type(exc).__name__,
                        "retry_in": pause,
                    },
                )
            else:
                self._refresh_paused.pop(key, None)

        # Paused until this refresh reports: no second one starts in between.
        self._refresh_paused[key] = math.inf
        task = asyncio.create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _single_flight(self, key: str, grant: Grant, accept: Accept) -> Issued:
        flight = self._flights.get(key)
        if flight is not None:  # join the exchange already under way
            self._waiting += 1
            self._on_waiters(self._waiting)
            try:
                return await asyncio.shield(flight)
            finally:
                self._waiting -= 1
                self._on_waiters(self._waiting)
        flight = asyncio.ensure_future(self._fetch_shared(key, grant, accept))
        self._flights[key] = flight

        def forget(done: asyncio.Future[Issued]) -> None:
            if self._flights.get(key) is done:
                del self._flights[key]
            if not done.cancelled():
                done.exception()  # mark retrieved: joiners may all have gone away

        flight.add_done_callback(forget)
        # Shielded: a caller that disconnects must not cancel the exchange others wait on.
        return await asyncio.shield(flight)

    async def _fetch_shared(self, key: str, grant: Grant, accept: Accept) -> Issued:
        """One exchange across all replicas: hold the lease or wait for its holder's value.

        The result says ``cache`` when another replica's exchange supplied the token.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_timeout
        pause = 0.01
        while True:
            lease = await self._lock.acquire(key)
            if lease is not None:
                try:
                    current = await self._cache.get(key)
                    if current is not None and accept(current):
                        return Issued(current, "cache")
                    # Counted only when an exchange really happens, after the lease and the
                    # cache re-check: waiting on another replica's exchange costs nothing.
                    await self._budget.spend(grant.profile)
                    token = await self._source.fetch(grant.profile, grant.scopes)
                    self._learn(grant.profile, token)
                    ttl = token.remaining(self._clock()) - self.skew(token)
                    if ttl > 0:
                        await self._cache.put(key, token, ttl)
                    return Issued(token, "issuer")
                finally:
                    await self._lock.release(key, lease)
            if loop.time() >= deadline:
                raise UpstreamUnavailable(
                    "timed out waiting for another replica's exchange with the issuer"
                )
            await self._sleep(pause)
            pause = min(pause * 1.5, 0.1)
            current = await self._cache.get(key)
            if current is not None and accept(current):
                return Issued(current, "cache")
