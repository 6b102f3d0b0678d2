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

__all__ = [
    "ISSUED_LINES_MAX",
    "admin",
    "budget_exceeded",
    "drain",
    "fingerprint",
    "issued_line_bytes",
    "line_bytes",
    "record",
    "token_fields",
    "use_sink",
]

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
    if log.isEnabledFor(logging.INFO):
        await sink.emit(line_bytes(message, fields, time.time(), REQUEST_ID.get()))


def line_bytes(message: str, fields: dict[str, Any], now: float, rid: str | None) -> bytes:
    """One audit line as the sink writes it: serialised once, scrubbed, newline-terminated."""
    line = {"time": iso_time(now), "level": "info", "logger": _LOGGER, "message": message}
    line.update(fields)
    if rid is not None:
        line["request_id"] = rid
    return scrub_bytes(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE))


def token_fields(
    outcome: str,
    *,
    caller: str | None,
    profile: str | None,
    credential: str | None,
    subject: str | None,
    detail: str | None,
    scopes: tuple[str, ...],
    reason: str | None,
    token: str | None,
    source: str | None,
    expires_in: int | None,
    labels: Mapping[str, str] | None,
    client: str | None,
) -> dict[str, Any]:
    """The fields of a ``token`` audit line, in the order every line carries them."""
    return {
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
    }


# A cached token is handed out again and again to the same caller: its lines differ only in
# time, expires_in and request_id. The rest is serialised and scrubbed once per distinct line
# (the dict, orjson and the scrub were half of a hand-out's own CPU in the profile) and the
# three fields are spliced in. No secret shape can span the splice points: every one lies
# inside a single JSON string (none of their characters is a quote), so scrubbing the parts
# equals scrubbing the line; tests/unit/test_audit_paths.py compares the two byte for byte.
_ISSUED_LINES: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
# Distinct (caller, token, labels, client...) lines remembered; cleared when full (tokens rotate).
ISSUED_LINES_MAX = 1024


def issued_line_bytes(
    *,
    caller: str | None,
    profile: str | None,
    credential: str | None,
    subject: str | None,
    scopes: tuple[str, ...],
    token: str,
    source: str | None,
    expires_in: int,
    labels: Mapping[str, str] | None,
    client: str | None,
    now: float,
    rid: str | None,
) -> bytes:
    """``line_bytes`` of an issued token's line, from a template after the first time."""
    key: tuple[Any, ...] = (caller, profile, credential, subject, scopes, token, source, client)
    if labels:
        key += tuple(labels.items())
    parts = _ISSUED_LINES.get(key)
    if parts is None:
        if len(_ISSUED_LINES) >= ISSUED_LINES_MAX:
            _ISSUED_LINES.clear()
        fields = token_fields(
            "issued",
            caller=caller,
            profile=profile,
            credential=credential,
            subject=subject,
            detail=None,
            scopes=scopes,
            reason=None,
            token=token,
            source=source,
            expires_in=None,
            labels=labels,
            client=client,
        )
        head = {"level": "info", "logger": _LOGGER, "message": _MESSAGES["issued"]}
        head.update(fields)
        del head["expires_in"], head["labels"], head["client"]
        tail = {"labels": fields["labels"], "client": client}
        parts = (
            scrub_bytes(orjson.dumps(head, default=str)[1:-1]),
            scrub_bytes(orjson.dumps(tail, default=str)[1:-1]),
        )
        _ISSUED_LINES[key] = parts
    if rid is None:
        rid_part = b""
    elif rid.isalnum():
        # A fresh id is hex: nothing to escape, and no secret shape is letters and digits only.
        rid_part = b',"request_id":"%s"' % rid.encode()
    else:
        rid_part = b',"request_id":' + scrub_bytes(orjson.dumps(rid))
    return b'{"time":"%s",%s,"expires_in":%d,%s%s}\n' % (
        iso_time(now).encode(),
        parts[0],
        expires_in,
        parts[1],
        rid_part,
    )


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
    sink = _sink
    if (
        sink is not None
        and outcome == "issued"
        and token
        and type(expires_in) is int
        and reason is None
        and detail is None
    ):
        # The served hand-out's path: one line per token handed out, from a template.
        if log.isEnabledFor(logging.INFO):
            line = issued_line_bytes(
                caller=caller,
                profile=profile,
                credential=credential,
                subject=subject,
                scopes=scopes,
                token=token,
                source=source,
                expires_in=expires_in,
                labels=labels,
                client=client,
                now=time.time(),
                rid=REQUEST_ID.get(),
            )
            await sink.emit(line)
        return
    await _write(
        _MESSAGES.get(outcome) or f"token {outcome}",
        token_fields(
            outcome,
            caller=caller,
            profile=profile,
            credential=credential,
            subject=subject,
            detail=detail,
            scopes=scopes,
            reason=reason,
            token=token,
            source=source,
            expires_in=expires_in,
            labels=labels,
            client=client,
        ),
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
