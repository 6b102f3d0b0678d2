"""Retries, a deadline and a per-profile circuit breaker around the issuer exchange.

Retried: network errors, timeouts, HTTP 5xx and 429 (waiting at least the issuer's
``Retry-After``). Not retried: the issuer's refusals (``invalid_client``, ``invalid_scope``,
``unauthorized_client``...), which asking again cannot change; they are a 502 naming the
issuer's error code. Every attempt fits in one deadline, so a hanging issuer costs a caller
at most ``deadline`` seconds, and while the circuit is open no attempt is made at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from service.errors import UpstreamError, UpstreamUnavailable
from service.observe import metrics
from service.upstream.resilience import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    CircuitState,
    whole_seconds,
)

if TYPE_CHECKING:
    from service.core.broker import TokenSource
    from service.models import IssuedToken

log = logging.getLogger("token_broker.upstream")
# How often a request checks whether a half-open circuit's probe has answered.
PROBE_POLL = 0.05


class ResilientTokenSource:
    """A ``TokenSource`` that retries within a deadline and fails fast while a circuit is open."""

    def __init__(
        self,
        inner: TokenSource | None,
        *,
        attempts: int,
        deadline: float,
        backoff: Backoff,
        failure_threshold: int,
        reset_after: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # Swapped when the configuration is reloaded; breakers and history stay.
        self.inner = inner
        self._attempts = attempts
        self._deadline = deadline
        self._backoff = backoff
        self._threshold = failure_threshold
        self._reset_after = reset_after
        self._clock = clock
        self._sleep = sleep
        self._breakers: dict[str, CircuitBreaker] = {}
        # profile -> (wall-clock time, outcome) of its last request to the issuer.
        self.last_exchange: dict[str, tuple[float, str]] = {}

    def reset(self) -> None:
        """Close every circuit: after a reload a fixed profile is tried at once."""
        self._breakers.clear()

    def breaker(self, profile: str) -> CircuitBreaker:
        """The profile's circuit breaker (created closed on first use)."""
        breaker = self._breakers.get(profile)
        if breaker is None:
            breaker = CircuitBreaker(
                threshold=self._threshold, reset_after=self._reset_after, clock=self._clock
            )
            self._breakers[profile] = breaker
        return breaker

    async def fetch(self, profile: str, scopes: tuple[str, ...]) -> IssuedToken:
        """One exchange, retried within the deadline; ``UpstreamUnavailable`` says when to retry."""
        breaker = self.breaker(profile)
        ends = self._clock() + self._deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                breaker.before_call()
            except CircuitOpen as exc:
                if breaker.state is CircuitState.HALF_OPEN and self._clock() + PROBE_POLL < ends:
                    # Another request is the probe: its answer decides, so wait for it rather
                    # than refuse (after an outage this replica may have no other traffic
                    # to the issuer to close the circuit with).
                    attempt -= 1
                    await self._sleep(PROBE_POLL)
                    continue
                metrics.circuit_rejections.labels(profile).inc()
                metrics.circuit_state.labels(profile).set(breaker.state)
                raise UpstreamUnavailable(
                    "the issuer is failing; not asking it again yet",
                    retry_after=whole_seconds(exc.retry_after),
                ) from None
            failure = await self._attempt(profile, scopes, breaker, ends)
            if isinstance(failure, UpstreamError) and not isinstance(failure, UpstreamUnavailable):
                raise failure
            if not isinstance(failure, UpstreamUnavailable):
                return failure
            wait = max(self._backoff.delay(attempt), failure.hint or 0.0)
            remaining = ends - self._clock()
            if attempt >= self._attempts or wait >= remaining:
                retry_after = breaker.retry_after() or max(failure.hint or 0.0, 1.0)
                log.warning(
                    "issuer unavailable; giving up for now",
                    extra={"profile": profile, "attempts": attempt, "reason": failure.description},
                )
                raise UpstreamUnavailable(
                    failure.description, retry_after=whole_seconds(retry_after)
                ) from None
            await self._sleep(wait)

    async def _attempt(
        self, profile: str, scopes: tuple[str, ...], breaker: CircuitBreaker, ends: float
    ) -> IssuedToken | UpstreamError:
        """One request: the token, or the error it ended with; the breaker and metrics updated."""
        started = self._clock()
        try:
            async with asyncio.timeout(max(0.001, ends - started)):
                assert self.inner is not None, "no issuer source installed"
                token = await self.inner.fetch(profile, scopes)
        except TimeoutError:
            breaker.failure()
            self._observe(profile, breaker, started, "timeout")
            return UpstreamUnavailable("the issuer did not answer in time")
        except UpstreamUnavailable as exc:
            breaker.failure(hold=exc.hint)
            self._observe(profile, breaker, started, "unavailable")
            return exc
        except UpstreamError as exc:
            # The issuer answered: it is up, even though it said no.
            breaker.success()
            self._observe(profile, breaker, started, "refused")
            label = metrics.issuer_error_label(exc.issuer_error)
            metrics.issuer_refusals.labels(profile, label).inc()
            return exc
        breaker.success()
        self._observe(profile, breaker, started, "ok")
        return token

    def _observe(self, profile: str, breaker: CircuitBreaker, started: float, outcome: str) -> None:
        self.last_exchange[profile] = (time.time(), outcome)
        metrics.issuer_requests.labels(profile, outcome).inc()
        metrics.issuer_latency.labels(profile).observe(self._clock() - started)
        metrics.circuit_state.labels(profile).set(breaker.state)
