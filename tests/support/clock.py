# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""The one fake clock of tests: time that moves only when a test (or its fake sleep) moves it."""

from __future__ import annotations

import time


class FakeClock:
    """A hand-moved clock: read ``now`` or call it; ``advance`` it, or ``await sleep`` on it."""

    def __init__(self, start: float | None = None) -> None:
        """Start at ``start`` seconds, or at the wall clock's time when not given."""
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        """The current fake time (a drop-in for ``time.time`` or ``time.monotonic``)."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """An ``asyncio.sleep`` stand-in that returns at once, the clock ``seconds`` later."""
        assert seconds >= 0
        self.advance(seconds)
