"""The sidecar's token keeping: fetch, refresh ahead of expiry, back off, drop when too old.

``TokenKeeper`` holds at most one token: it refreshes ahead of expiry, backs off with full
jitter while the broker is down, writes the file atomically (0600) and drops the token (and
removes the file) the moment it no longer has ``min_ttl`` left, so nothing ever reads a token
that is about to expire. Time, sleep and randomness are injected, so the schedule is unit
tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .client import ClientError, FetchedToken, write_private_file
from .oauth2 import Backoff, fingerprint

__all__ = ["Backoff", "Held", "TokenKeeper"]

log = logging.getLogger("token_broker.sidecar")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# Asks the broker for a token that lives at least the given number of seconds.
Fetch = Callable[[int], Awaitable[FetchedToken]]

MAX_MARGIN_SECONDS = 5.0
MIN_REFRESH_INTERVAL = 1.0
# Even a lucky jitter draw waits this long, so a broker that answers at once is not spun on.
MIN_RETRY_DELAY = 0.1


@dataclass(frozen=True)
class Held:
    """A token the keeper holds, with its expiry on the keeper's clock."""

    token: FetchedToken
    expires_at: float
    fingerprint: str

    @classmethod
    def of(cls, token: FetchedToken, asked_at: float) -> Held:
        """``token`` as answered to a request sent at ``asked_at`` (expiry errs early)."""
        return cls(token, asked_at + token.expires_in, fingerprint(token.access_token))

    @property
    def margin(self) -> float:
        """Never hand out the last seconds of a token: it may expire on its way to a server."""
        return min(MAX_MARGIN_SECONDS, self.token.expires_in / 10)

    def remaining(self, now: float) -> float:
        """Seconds of life left at ``now``."""
        return self.expires_at - now


@dataclass
class TokenKeeper:
    """Holds at most one token with at least ``min_ttl`` left; see the module docstring."""

    fetch: Fetch
    min_ttl: int = 0
    path: Path | None = None
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    rand: Callable[[], float] = random.random
    backoff: Backoff = field(default_factory=lambda: Backoff(floor=MIN_RETRY_DELAY))
    refresh_fraction: float = 2 / 3
    held: Held | None = None
    failures: int = 0
    next_fetch_at: float = -math.inf
    last_error: ClientError | None = None

    def usable_until(self, held: Held) -> float:
        """The moment ``held`` stops being served: ``min_ttl`` (or the margin) before expiry."""
        return held.expires_at - max(self.min_ttl, held.margin)

    def current(self) -> Held | None:
        """The held token if it may be handed out now, else None."""
        held = self.held
        if held is not None and self.clock() < self.usable_until(held):
            return held
        return None

    def retry_after(self) -> int:
        """Whole seconds until the keeper next asks the broker (at least 1)."""
        wait = self.next_fetch_at - self.clock()
        return max(1, math.ceil(wait)) if math.isfinite(wait) else 1

    async def refresh(self) -> bool:
        """Ask the broker once; on success hold and write the token, else schedule a retry."""
        held = self.current()
        # Asking for more life than the held token has left makes the broker hand out a newer
        # token rather than the one we hold from its cache; a broker whose policy caps
        # max_ttl below that refuses with 400, and then we ask for min_ttl alone.
        wanted = self.min_ttl
        if held is not None:
            wanted = max(wanted, math.ceil(held.remaining(self.clock())) + 1)
        asked_at = self.clock()
        try:
            try:
                token = await self.fetch(wanted)
            except ClientError as exc:
                if wanted == self.min_ttl or exc.status != http.HTTPStatus.BAD_REQUEST:
                    raise
                asked_at = self.clock()
                token = await self.fetch(self.min_ttl)
        except ClientError as exc:
            self._failed(exc)
            return False
        fresh = Held.of(token, asked_at)
        if self.clock() >= self.usable_until(fresh):
            self._failed(ClientError(f"broker handed out a token with less than {self.min_ttl} s"))
            return False
        if self.path is not None:
            try:
                await asyncio.to_thread(write_private_file, self.path, token.access_token)
            except OSError as exc:
                self._failed(ClientError(f"cannot write {self.path}: {exc.strerror}"))
                return False
        self._hold(fresh)
        return True

    def _hold(self, fresh: Held) -> None:
        now = self.clock()
        previous, self.held = self.held, fresh
        self.failures, self.last_error = 0, None
        # Refresh when refresh_fraction of the usable life is behind us: the rest is the
        # window in which the broker may be down without anyone noticing.
        usable = self.usable_until(fresh) - now
        self.next_fetch_at = now + max(MIN_REFRESH_INTERVAL, self.refresh_fraction * usable)
        log.info(
            "token held",
            extra={
                "event": "sidecar_token",
                "fingerprint": fresh.fingerprint,
                "renewed": previous is None or previous.fingerprint != fresh.fingerprint,
                "expires_in": fresh.token.expires_in,
                "source": fresh.token.source,
                "refresh_in": round(self.next_fetch_at - now, 1),
            },
        )

    def _failed(self, exc: ClientError) -> None:
        self.failures += 1
        self.last_error = exc
        delay = self.backoff.delay(self.failures, self.rand(), exc.retry_after)
        self.next_fetch_at = self.clock() + delay
        held = self.current()
        log.warning(
            "token refresh failed: %s",
            exc,
            extra={
                "event": "sidecar_refresh_failed",
                "status": exc.status,
                "failures": self.failures,
                "retry_in": round(delay, 2),
                "serving": held.fingerprint if held else None,
            },
        )

    def expire(self) -> None:
        """Drop a token that may no longer be handed out, and remove its file."""
        held = self.held
        if held is None or self.current() is not None:
            return
        self.held = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        log.warning(
            "token dropped: less than min_ttl left and no replacement yet",
            extra={"event": "sidecar_token_dropped", "fingerprint": held.fingerprint},
        )

    async def tick(self) -> float:
        """One step: drop an unusable token, refresh when due; seconds until the next step."""
        self.expire()
        if self.clock() >= self.next_fetch_at:
            await self.refresh()
            self.expire()
        wake = self.next_fetch_at
        if self.held is not None:
            wake = min(wake, self.usable_until(self.held))
        return max(0.0, wake - self.clock())

    async def run(self) -> None:
        """Keep a token for ever (cancel the task to stop)."""
        while True:
            await self.sleep(await self.tick())

    async def once(self, budget: float) -> bool:
        """Fetch and write one token, retrying transient failures for up to ``budget`` s.

        A definite refusal (401, 403, or 400 such as a min_ttl the issuer cannot satisfy)
        fails at once: asking again gives the same answer.
        """
        deadline = self.clock() + budget
        while True:
            if await self.refresh():
                return True
            error = self.last_error
            if error is None or not error.retryable or self.next_fetch_at > deadline:
                return False
            await self.sleep(max(0.0, self.next_fetch_at - self.clock()))
