"""The audit trail: one structured line per issuance and per denial.

Fields are chosen so the secret team can answer "who got which token when" without the
line ever holding a token: ``fingerprint`` is a hash prefix of the token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

# One definition: the sidecar logs the same fingerprint the audit line carries.
from service.runner.oauth2 import fingerprint

__all__ = ["admin", "fingerprint", "record"]

log = logging.getLogger("token_broker.audit")


def record(
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
    log.info(
        "token %s",
        outcome,
        extra={
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


def admin(
    action: str, *, caller: str, profile: str | None, outcome: str, client: str | None
) -> None:
    """Write one audit line for an admin API call, allowed or not."""
    log.info(
        "admin %s %s",
        action,
        outcome,
        extra={
            "event": "admin",
            "action": action,
            "outcome": outcome,
            "caller": caller,
            "profile": profile,
            "client": client,
        },
    )
