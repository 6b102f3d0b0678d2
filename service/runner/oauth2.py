"""What runner and server share: RFC 6749 errors and forms, name rules, Retry-After, backoff.

Standard library only, so the runner can use it without the server; the server imports it
from here, so each rule is written once.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

__all__ = [
    "ACCESS_DENIED",
    "DEFAULT_BROKER_URL",
    "INVALID_CLIENT",
    "INVALID_GRANT",
    "INVALID_REQUEST",
    "INVALID_SCOPE",
    "NAME_PATTERN",
    "SERVER_ERROR",
    "TEMPORARILY_UNAVAILABLE",
    "UNAUTHORIZED_CLIENT",
    "UNSUPPORTED_GRANT_TYPE",
    "Backoff",
    "OAuth2Error",
    "fingerprint",
    "parse_form",
    "retry_after_seconds",
]

# RFC 6749 section 5.2 error codes (and section 4.1.2.1's temporarily_unavailable).
INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
INVALID_GRANT = "invalid_grant"
INVALID_SCOPE = "invalid_scope"
UNAUTHORIZED_CLIENT = "unauthorized_client"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
ACCESS_DENIED = "access_denied"
SERVER_ERROR = "server_error"
TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"

DEFAULT_BROKER_URL = "http://127.0.0.1:8080"
# Profile, caller and label names: safe in a log line, a metric label and a URL path segment.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_MAX_RETRY_AFTER = 86_400


class OAuth2Error(Exception):
    """An error answered with an RFC 6749 body: ``status``, ``error``, ``description``.

    Subclasses fix ``status`` and ``error`` as class attributes (the server's tree in
    ``service.errors``); the runner passes them per instance. Descriptions are written for
    the caller and never repeat its input.
    """

    error = SERVER_ERROR
    status = 500

    def __init__(
        self,
        description: str,
        *,
        status: int | None = None,
        error: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        if status is not None:
            self.status = status
        if error is not None:
            self.error = error
        self._headers = dict(headers or {})

    def headers(self) -> dict[str, str]:
        """Extra response headers this error requires (Retry-After, WWW-Authenticate...)."""
        return dict(self._headers)

    def body(self) -> dict[str, str]:
        """The RFC 6749 section 5.2 JSON body."""
        return {"error": self.error, "error_description": self.description}


def _invalid_request(description: str) -> OAuth2Error:
    return OAuth2Error(description, status=400, error=INVALID_REQUEST)


def parse_form(
    body: bytes, invalid: Callable[[str], OAuth2Error] = _invalid_request
) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body or query string; one value per name.

    ``invalid`` makes the 400 for a malformed or repeated parameter (the broker passes its
    own ``InvalidRequest``, so its handlers and audit see their usual class).
    """
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise invalid("body is not application/x-www-form-urlencoded") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        # RFC 6749 section 3.2: parameters must not be included more than once. The name is
        # caller input, possibly unknown to us: never repeated back.
        if key in form:
            raise invalid("a form parameter is repeated (RFC 6749 section 3.2)")
        form[key] = value
    return form


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """An HTTP ``Retry-After`` value in seconds: delta-seconds or an HTTP date; else ``None``.

    An HTTP date needs ``now`` (Unix time) to become a delay.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(min(int(text), _MAX_RETRY_AFTER))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None or moment.tzinfo is None or now is None:
        return None
    return max(0.0, min(moment.timestamp() - now, float(_MAX_RETRY_AFTER)))


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: uniform in ``[floor, min(cap, base * 2**(n-1))]``.

    Full jitter spreads the retries of many clients that failed at the same moment, so a
    dependency that comes back is not hit by all of them at once. No clock of its own.
    """

    base: float = 1.0
    cap: float = 60.0
    floor: float = 0.0
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def ceiling(self, attempt: int) -> float:
        """The longest delay after failed attempt number ``attempt`` (1-based)."""
        # The exponent is bounded: 2.0**1100 overflows, and the cap is reached long before.
        return float(min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 30)))

    def delay(
        self, attempt: int, rand: float | None = None, retry_after: float | None = None
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` (``rand`` in [0, 1) or from rng)."""
        draw = self.rng() if rand is None else rand
        wait = max(self.floor, draw * self.ceiling(attempt))
        if retry_after is not None:
            # The server knows when asking again makes sense; still bounded by our cap.
            wait = max(wait, min(retry_after, self.cap))
        return wait


@functools.lru_cache(maxsize=4096)
def fingerprint(token: str) -> str:
    """A stable, non-reversible short id of a token, for log and audit lines.

    Memoised: a cached token is the same ``str`` object on every hand-out, and its hash is
    cached by Python, so the lookup costs far less than hashing 1 kB again.
    """
    return hashlib.sha256(token.encode()).hexdigest()[:16]
