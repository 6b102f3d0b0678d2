"""The audit trail: one structured line per issuance and per denial.

Fields are chosen so the secret team can answer "who got which token when" without the
line ever holding a token: ``fingerprint`` is a hash prefix of the token.

A served process (``serve``, JSON logs) writes the lines through the audit sink
(``observe/sink.py``): the event is built as a dict here, serialised once with orjson,
scrubbed and queued, and the loop writes it; a hand-out awaits that, so a trail that cannot
keep up fails it closed (503) instead of losing the line. Elsewhere (tests driving the app
in-process, terminals) the lines go through ``logging`` as before. Both give the same JSON
keys in the same order as ``logs.JsonFormatter``.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson

from service.observe.logs import REQUEST_ID, iso_time, scrub_bytes
from service.observe.sink import AuditSink

# One definition: the sidecar logs the same fingerprint the audit line carries.
from service.runner.oauth2 import fingerprint

__all__ = ["admin", "budget_exceeded", "drain", "fingerprint", "record", "use_sink"]

_LOGGER = "token_broker.audit"
log = logging.getLogger(_LOGGER)
_MESSAGES = {"issued": "token issued", "denied": "token denied"}
_sink: AuditSink | None = None


def use_sink(sink: AuditSink | None) -> None:
    """Write audit lines through ``sink`` from now on (``None``: through ``logging``)."""
    global _sink  # noqa: PLW0603 - one trail per process, chosen at start-up
    if _sink is None and sink is not None:
        atexit.register(drain)  # in case shutdown never reaches the lifespan's drain
    _sink = sink


def drain() -> None:
    """Write out every queued line, blocking (shutdown)."""
    if _sink is not None:
        _sink.drain()


async def _write(message: str, fields: dict[str, Any]) -> None:
    sink = _sink
    if sink is None:
        log.info("%s", message, extra=fields)
        return
    # The logger's level still decides (WARNING turns audit lines off), as with logging.
    if not log.isEnabledFor(logging.INFO):
        return
    line = {"time": iso_time(time.time()), "level": "info", "logger": _LOGGER, "message": message}
    line.update(fields)
    if (rid := REQUEST_ID.get()) is not None:
        line["request_id"] = rid
    # Serialised, scrubbed and queued as bytes: this runs once per hand-out.
    await sink.emit(scrub_bytes(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)))


async def record(
    outcome: str,
    *,
    caller: str | None,
    profile: str | None,
    credential: str | None = None,
    subject: str | None = None,
    detail: str | None = None,
    scopes: tuple[str, ...] = (),
    reason: str | None = None,
    token: str | None = None,
    source: str | None = None,
    expires_in: int | None = None,
    labels: Mapping[str, str] | None = None,
    client: str | None = None,
) -> None:
    """Write one audit line; ``outcome`` is ``issued`` or ``denied``."""
    await _write(
        _MESSAGES.get(outcome) or f"token {outcome}",
        {
            "event": "token",
            "outcome": outcome,
            "caller": caller,
            "credential": credential,
            "subject": subject,
            "profile": profile,
            "scopes": " ".join(scopes),
            "reason": reason,
            "detail": detail,
            "fingerprint": fingerprint(token) if token else None,
            "source": source,
            "expires_in": expires_in,
            "labels": dict(labels or {}),
            "client": client,
        },
    )


async def admin(
    action: str, *, caller: str, profile: str | None, outcome: str, client: str | None
) -> None:
    """Write one audit line for an admin API call, allowed or not."""
    await _write(
        f"admin {action} {outcome}",
        {
            "event": "admin",
            "action": action,
            "outcome": outcome,
            "caller": caller,
            "profile": profile,
            "client": client,
        },
    )


async def budget_exceeded(profile: str, limit: int) -> None:
    """Write one audit line for an exchange refused because ``profile`` spent its budget."""
    await _write(
        "issuer budget exceeded",
        {"event": "issuer_budget", "profile": profile, "limit": limit},
    )
