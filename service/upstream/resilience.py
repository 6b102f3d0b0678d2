"""Pure resilience policies: a circuit breaker (backoff and Retry-After come from the runner).

No I/O and no clock of their own: callers pass time in, so the schedules are unit tested
without sleeping. ``upstream/resilient.py`` applies them to the issuer exchange.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

from service.runner.oauth2 import Backoff, retry_after_seconds

__all__ = [
    "Backoff",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "retry_after_seconds",
    "whole_seconds",
]


class CircuitState(enum.IntEnum):
    """Values double as the ``token_broker_circuit_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpen(Exception):
    """The breaker refuses the call; ``retry_after`` says when it will let a probe through."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit open for {retry_after:.1f} s")
        self.retry_after = retry_after


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``reset_after`` seconds lets one
    probe through (half-open); the probe's success closes it, its failure opens it again.
    """

    def __init__(self, *, threshold: int, reset_after: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._open_for = reset_after
        self._probing = False

    @property
    def state(self) -> CircuitState:
        """Closed, open, or half-open (the reset time has passed; a probe may go)."""
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock() - self._opened_at >= self._open_for:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._failures

    def retry_after(self) -> float:
        """Seconds until a probe may go (0 when one may go now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._open_for - self._clock())

    def before_call(self) -> None:
        """Raise ``CircuitOpen`` unless a call may go now."""
        state = self.state
        if state is CircuitState.OPEN:
            raise CircuitOpen(self.retry_after())
        if state is CircuitState.HALF_OPEN:
            if self._probing:
                # One probe at a time; the others fail fast until it reports back.
                raise CircuitOpen(1.0)
            self._probing = True

    def success(self) -> None:
        """The dependency answered: close."""
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self, *, hold: float | None = None) -> None:
        """The dependency failed; ``hold`` (its Retry-After) keeps an opening breaker open."""
        self._failures += 1
        was_probe, self._probing = self._probing, False
        if was_probe or self._failures >= self.threshold:
            self._open(max(self.reset_after, hold or 0.0))

    def _open(self, seconds: float) -> None:
        self._opened_at = self._clock()
        self._open_for = seconds


def whole_seconds(seconds: float) -> int:
    """A Retry-After header value: whole seconds, at least 1."""
    # Rounded first so float noise (30.000000004) does not add a whole second.
    return max(1, math.ceil(round(seconds, 3)))
