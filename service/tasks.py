"""Ending background tasks at shutdown: let them finish for a while, then cancel the rest.

Standard library only, so the core, the stores and the runtime share one way to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

__all__ = ["finish_or_cancel"]


async def finish_or_cancel(
    tasks: Collection[asyncio.Future[Any]], *, grace: float, after_cancel: float
) -> None:
    """Wait up to ``grace`` s for ``tasks``; cancel those still running, wait ``after_cancel`` s.

    Bounded both ways, like every step of shutdown: a stuck task must not hold the process.
    Each finished task's exception is retrieved, so none is reported as never retrieved.
    """
    pending = list(tasks)
    if not pending:
        return
    _, running = await asyncio.wait(pending, timeout=grace)
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running, timeout=after_cancel)
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()
