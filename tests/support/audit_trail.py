"""Audit lines as a served broker writes them: through the audit sink, read back from its file.

In-process tests would otherwise see the lines through ``logging`` (the fallback a process
without a sink uses), which is not the path production takes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.observe import audit
from service.observe.sink import AuditSink

__all__ = ["AuditTrail", "audit_trail_at"]


class AuditTrail:
    """The sink a test's broker writes its audit lines through, and what reached its file."""

    def __init__(self, path: Path, sink: AuditSink) -> None:
        self.path = path
        self._sink = sink

    def text(self) -> str:
        """Everything written so far (queued lines first written out)."""
        self._sink.drain()
        return self.path.read_text(encoding="utf-8")

    def lines(self) -> list[dict[str, Any]]:
        """Every audit line so far, parsed; each must be one JSON object."""
        return [json.loads(line) for line in self.text().splitlines()]


@contextmanager
def audit_trail_at(path: Path) -> Iterator[AuditTrail]:
    """Route this process's audit lines through a sink writing to ``path`` (INFO and up)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    logger = logging.getLogger(audit.log.name)
    level = logger.level
    sink = AuditSink(fd)
    audit.use_sink(sink)
    logger.setLevel(logging.INFO)
    try:
        yield AuditTrail(path, sink)
    finally:
        sink.drain()
        audit.use_sink(None)
        logger.setLevel(level)
        os.close(fd)
