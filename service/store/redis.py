"""Shared L2 cache and cross-replica refresh lock on Redis (redis-py asyncio).

Values are AES-GCM blobs (``crypto.TokenCipher``); Redis never sees a token in plain text.
Keys are hashes, so they reveal neither profile nor scopes.

Redis is an optimisation, never a single point of failure: a failed read is a miss, a failed
write is skipped, and a lock that cannot be taken in Redis falls back to the in-process
single-flight, which still allows only one exchange per replica. After a failure,
``RedisHealth`` skips Redis altogether (no request waits on a dead server's timeout) and lets
one call through as a probe every ``probe_interval``; the first success ends the degradation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import orjson
from redis.exceptions import RedisError

from service.errors import CacheUnavailable
from service.models import IssuedToken
from service.observe import metrics
from service.store.crypto import TokenCipher, UndecryptableError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("token_broker.cache")

PREFIX = "token-broker:v1:"
# Pub/sub channel on which a replica that invalidated tokens tells the others (L1 drops).
INVALIDATIONS = PREFIX + "invalidate"
INVALIDATION_COUNT = PREFIX + "invalidations"
CLOSE_TIMEOUT_SECONDS = 2.0
_LOCAL_LEASE = "local"
# How often a Redis never reached since start is reported again at error level.
ALARM_INTERVAL_SECONDS = 60.0
REASON_CHARS = 200
T = TypeVar("T")

# Delete the lock only if it still holds our lease: a holder that overran its lease must
# not release the lock a successor now holds.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

# Push the lock's expiry forward only while it still holds our lease.
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class RedisDown(Exception):
    """Redis is being skipped (degraded) or the call just failed."""


class RedisHealth:
    """Whether Redis answers; while it does not, calls are skipped except one probe at a time.

    A Redis that has never answered since start is told apart from one that was lost: the
    first is usually a misconfiguration (wrong host or port), so it is logged at error level,
    again at most once per ``alarm_interval``, until Redis is reached.
    """

    def __init__(
        self,
        *,
        probe_interval: float,
        clock: Callable[[], float] = time.monotonic,
        target: str = "redis",
        hide: tuple[str, ...] = (),
        alarm_interval: float = ALARM_INTERVAL_SECONDS,
    ) -> None:
        self._probe_interval = probe_interval
        self._clock = clock
        self._target = target
        self._hide = hide
        self._alarm_interval = alarm_interval
        self._up = True
        self._reached = False
        self._last_alarm: float | None = None
        self._next_probe = 0.0
        # 0 until the first answer: a Redis never reached must not look healthy on a dashboard.
        metrics.redis_up.set(0)

    @property
    def up(self) -> bool:
        """False while the broker runs degraded on its in-process cache."""
        return self._up

    @property
    def reached(self) -> bool:
        """True once Redis has answered at least once since start."""
        return self._reached

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` unless Redis is being skipped; raise ``RedisDown`` on any failure."""
        if not self._up:
            now = self._clock()
            if now < self._next_probe:
                raise RedisDown
            # This call is the probe; the others keep skipping until it reports back.
            self._next_probe = now + self._probe_interval
        try:
            result = await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)
            raise RedisDown from None
        self.succeeded()
        return result

    def failed(self, exc: BaseException) -> None:
        """Record a failure: degrade (logged once per outage; at error level until reached)."""
        metrics.redis_errors.inc()
        now = self._clock()
        self._next_probe = now + self._probe_interval
        was_up, self._up = self._up, False
        metrics.redis_up.set(0)
        reason = failure_reason(exc, hide=self._hide)
        if not self._reached:
            if self._last_alarm is None or now - self._last_alarm >= self._alarm_interval:
                self._last_alarm = now
                log.error(
                    "redis never reached since start; serving from the in-process cache and "
                    "issuer, retrying (check TOKEN_BROKER_REDIS_URL host and port)",
                    extra={"redis": self._target, "reason": reason},
                )
            return
        if was_up:
            log.warning(
                "redis failed; degraded to the in-process cache and single-flight",
                extra={"redis": self._target, "reason": reason},
            )

    def succeeded(self) -> None:
        """Record a success: recover (logged once)."""
        if not self._reached:
            self._reached = self._up = True
            metrics.redis_up.set(1)
            log.info("redis reached", extra={"redis": self._target})
            return
        if not self._up:
            self._up = True
            metrics.redis_up.set(1)
            log.warning(
                "redis answers again; shared cache and lock restored",
                extra={"redis": self._target},
            )


def failure_reason(exc: BaseException, *, hide: tuple[str, ...] = ()) -> str:
    """``ExceptionClass: short message`` for a failed Redis call, with ``hide`` masked.

    The class is the innermost cause's (``ConnectionRefusedError`` rather than redis-py's
    wrapper): that is what tells an operator whether the port, the host or TLS is wrong.
    """
    root = exc
    while (inner := root.__cause__ or root.__context__) is not None and inner is not root:
        root = inner
    message = " ".join(str(exc).split())[:REASON_CHARS]
    for secret in hide:
        if secret:
            message = message.replace(secret, "***")
    return f"{type(root).__name__}: {message}" if message else type(root).__name__


class RedisTokenCache:
    """Encrypted tokens in Redis, each with a TTL that ends before the token does."""

    def __init__(self, client: Redis, cipher: TokenCipher, health: RedisHealth) -> None:
        self._client = client
        self._cipher = cipher
        self._health = health

    def use_cipher(self, cipher: TokenCipher) -> None:
        """Encrypt with ``cipher`` from now on (rotated cache keys, read again from their file)."""
        self._cipher = cipher

    async def invalidate(self, prefix: str) -> None:
        """Delete the matching tokens and tell every replica to drop them from its L1.

        Raises ``CacheUnavailable`` when Redis is down: the other replicas could not be told.
        """
        pattern = PREFIX + "token:" + prefix + "*"

        async def drop() -> None:
            names = [name async for name in self._client.scan_iter(match=pattern, count=500)]
            if names:
                await self._client.delete(*names)
            # Counted, so a replica that was disconnected can tell whether it missed any.
            await self._client.incr(INVALIDATION_COUNT)
            await self._client.publish(INVALIDATIONS, prefix)

        try:
            await self._health.call(drop)
        except RedisDown:
            raise CacheUnavailable(
                "Redis is unavailable: cached tokens were dropped in this replica only"
            ) from None

    async def get(self, key: str) -> IssuedToken | None:
        """Decrypt the token under ``key``; an unreadable value or a Redis failure is a miss."""
        name = PREFIX + "token:" + key
        try:
            blob = await self._health.call(lambda: self._client.get(name))
        except RedisDown:
            return None
        if not isinstance(blob, bytes):
            return None
        try:
            data = orjson.loads(self._cipher.decrypt(blob, name.encode()))
            return IssuedToken(
                access_token=data["access_token"],
                token_type=data["token_type"],
                issued_at=float(data["issued_at"]),
                expires_at=float(data["expires_at"]),
                scope=data["scope"],
            )
        except (UndecryptableError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "cached token unreadable; treating as a miss", extra={"reason": type(exc).__name__}
            )
            return None

    async def put(self, key: str, token: IssuedToken, ttl: float) -> None:
        """Encrypt and store with a millisecond TTL; skipped while Redis is down."""
        name = PREFIX + "token:" + key
        plaintext = orjson.dumps(
            {
                "access_token": token.access_token,
                "token_type": token.token_type,
                "issued_at": token.issued_at,
                "expires_at": token.expires_at,
                "scope": token.scope,
            }
        )
        blob = self._cipher.encrypt(plaintext, name.encode())
        # While Redis is down this replica's L1 still has it; other replicas fetch their own.
        with contextlib.suppress(RedisDown):
            await self._health.call(
                lambda: self._client.set(name, blob, px=max(1, int(ttl * 1000)))
            )


class RedisRefreshLock:
    """``SET NX PX`` lease; released only by its holder, expires if the holder dies.

    While held, the lease is renewed every third of its length: an exchange slower than one
    lease (slow issuer, retries) keeps it, and a dead holder's lease still ends within one.
    """

    def __init__(self, client: Redis, lease_seconds: float, health: RedisHealth) -> None:
        self._client = client
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)
        self._health = health
        self._keepers: dict[str, asyncio.Task[None]] = {}

    async def acquire(self, key: str) -> str | None:
        """A random lease id when the lock was free; a local lease while Redis is down."""
        lease = secrets.token_hex(16)
        try:
            acquired = await self._health.call(
                lambda: self._client.set(PREFIX + "lock:" + key, lease, nx=True, px=self._lease_ms)
            )
        except RedisDown:
            # Degraded: the in-process single-flight still allows one exchange per replica.
            return _LOCAL_LEASE
        if not acquired:
            return None
        self._keepers[lease] = asyncio.create_task(self._keep(PREFIX + "lock:" + key, lease))
        return lease

    async def _keep(self, name: str, lease: str) -> None:
        """Renew the lease until it is released or is no longer ours."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            with contextlib.suppress(RedisDown):  # try again; else it expires by itself
                if not await self._health.call(
                    lambda: self._extend(keys=[name], args=[lease, self._lease_ms])
                ):
                    return

    async def release(self, key: str, lease: str) -> None:
        """Compare-and-delete, atomically in Redis; an unreleased lease expires by itself."""
        if lease == _LOCAL_LEASE:
            return
        keeper = self._keepers.pop(lease, None)
        if keeper is not None:
            keeper.cancel()
        with contextlib.suppress(RedisDown):  # else the lease expires by itself
            await self._health.call(
                lambda: self._release(keys=[PREFIX + "lock:" + key], args=[lease])
            )


async def listen_for_invalidations(
    client: Redis,
    drop: Callable[[str], Awaitable[None]],
    *,
    retry_seconds: float,
    stop: asyncio.Event,
    poll_seconds: float = 0.1,
) -> None:
    """Apply other replicas' invalidations to this one's L1 until ``stop`` is set.

    While Redis is down the subscription is retried every ``retry_seconds``. Each
    invalidation also counts in Redis; on resubscribing, a count other than the one this
    replica expects means messages were missed, and its whole L1 is dropped. A Redis that
    restarted empty with nothing missed leaves the L1 alone: dropping it would send every
    replica to the issuer at the same moment.

    Ended by ``stop``, not by cancelling: a subscription cancelled in the middle of a read
    could not be closed (its close waits on the reader, redis-py #3941) and hung shutdown.
    Reads are therefore bounded (``poll_seconds``) and ``stop`` is checked between them.
    """
    expected: int | None = None
    while not stop.is_set():
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(INVALIDATIONS)
            count = int(await client.get(INVALIDATION_COUNT) or 0)
            if expected is not None and count != expected:
                await drop("")
            expected = count
            while not stop.is_set():
                message = await pubsub.get_message(timeout=poll_seconds)
                if message is not None and isinstance(message.get("data"), bytes):
                    expected += 1
                    await drop(message["data"].decode("ascii", "replace"))
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            log.debug("invalidation subscription lost", extra={"reason": type(exc).__name__})
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(pubsub.aclose(), timeout=CLOSE_TIMEOUT_SECONDS)  # type: ignore[no-untyped-call]
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=retry_seconds)
