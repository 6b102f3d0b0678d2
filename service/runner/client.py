"""Runner-side HTTP client: asks a running broker for a token (``token``, ``exec``, ``sidecar``).

Also carries ``token-broker admin``'s calls, so both authenticate the same way. Standard
library only (urllib over http.client, TLS verified against the system store or
``TOKEN_BROKER_CA_FILE``): it runs in every Airflow task and ingestion pod, next to other
people's pins, and start-up time is paid on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from .oauth2 import DEFAULT_BROKER_URL, NAME_PATTERN, retry_after_seconds

__all__ = [
    "DEFAULT_CREDENTIAL_PATH",
    "DEFAULT_URL",
    "ClientError",
    "FetchedToken",
    "admin_call",
    "afetch_token",
    "credential_from_env",
    "fetch_token",
    "https_opener",
    "parse_label",
    "parse_response",
    "run_labels",
    "write_private_file",
]

DEFAULT_URL = DEFAULT_BROKER_URL
# Where a pod mounts its projected service-account token for the broker (a projected volume
# with `audience: token-broker`). We deliberately do NOT fall back to the generic
# /var/run/secrets/kubernetes.io/serviceaccount/token: that token is a credential for the
# Kubernetes API server, and sending it to any other service hands that service the pod's
# API access. Only a token minted for the broker's audience may leave the pod.
DEFAULT_CREDENTIAL_PATH = Path("/var/run/secrets/token-broker/token")
CA_FILE_VARIABLE = "TOKEN_BROKER_CA_FILE"

LABEL_NAME_PATTERN = NAME_PATTERN
LABEL_VALUE_MAX = 256
MAX_LABELS = 16
# Airflow exports these to every task (BashOperator env, PythonOperator os.environ).
AIRFLOW_LABELS: Mapping[str, str] = {
    "AIRFLOW_CTX_DAG_ID": "dag_id",
    "AIRFLOW_CTX_TASK_ID": "task_id",
    "AIRFLOW_CTX_DAG_RUN_ID": "run_id",
    "AIRFLOW_CTX_TRY_NUMBER": "try_number",
}
_LABEL_NAME = re.compile(LABEL_NAME_PATTERN)
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# A token answer is a few kB; anything far larger is not the broker.
_MAX_ANSWER_BYTES = 1 << 20


class ClientError(Exception):
    """The broker could not be asked, or said no; the message is safe to print.

    ``status`` is the broker's HTTP status (None when it was never reached), ``error`` its
    RFC 6749 error code, ``detail`` its error_description, ``retry_after`` its Retry-After in
    seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Asking again later may succeed (broker unreachable, overloaded or issuer down)."""
        return self.status is None or self.status in _RETRYABLE_STATUS


@dataclass(frozen=True)
class FetchedToken:
    """The broker's answer."""

    access_token: str
    expires_in: int
    scope: str
    source: str
    body: Mapping[str, Any] = field(repr=False)
    token_type: str = "Bearer"  # noqa: S105 (a token type, not a secret)

    def __repr__(self) -> str:
        # A token must never reach a log line through a stray repr().
        return f"FetchedToken(expires_in={self.expires_in}, scope={self.scope!r})"


def credential_from_env(
    environ: Mapping[str, str] = os.environ,
    default_path: Path = DEFAULT_CREDENTIAL_PATH,
) -> str:
    """The caller credential, read afresh on every call (projected tokens rotate).

    ``TOKEN_BROKER_CREDENTIAL``, else the file named by ``TOKEN_BROKER_CREDENTIAL_FILE``,
    else ``default_path`` when it exists.
    """
    value = environ.get("TOKEN_BROKER_CREDENTIAL", "").strip()
    if value:
        return value
    path = environ.get("TOKEN_BROKER_CREDENTIAL_FILE", "").strip()
    if path:
        return _read_credential(Path(path), "TOKEN_BROKER_CREDENTIAL_FILE")
    if default_path.is_file():
        return _read_credential(default_path, str(default_path))
    raise ClientError(
        "set TOKEN_BROKER_CREDENTIAL or TOKEN_BROKER_CREDENTIAL_FILE "
        f"(or mount a projected token at {default_path})"
    )


def _read_credential(path: Path, name: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ClientError(f"cannot read {name}: {reason}") from None
    if not value:
        raise ClientError(f"{name} is empty")
    return value


def parse_label(text: str) -> tuple[str, str]:
    """``key=value`` from ``--label``; raises ``ValueError`` naming the key, never the value."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError("a label is key=value")
    if not _LABEL_NAME.fullmatch(key):
        raise ValueError(
            f"label name {key[:64]!r}: letters, digits, '.', '_', '-', at most 64, "
            "starting with a letter or digit"
        )
    if len(value) > LABEL_VALUE_MAX:
        raise ValueError(f"label {key}: value longer than {LABEL_VALUE_MAX} characters")
    return key, value


def run_labels(
    explicit: Mapping[str, str] | None = None, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """Audit labels for a request: Airflow's ``AIRFLOW_CTX_*`` context, then ``explicit``.

    Explicit labels win. Airflow values are truncated to what the broker accepts, and left
    out when empty, so an unusually long run_id never makes a run fail.
    """
    labels: dict[str, str] = {}
    for variable, name in AIRFLOW_LABELS.items():
        value = environ.get(variable, "").strip()
        if value:
            labels[name] = value[:LABEL_VALUE_MAX]
    for name, value in (explicit or {}).items():
        labels.pop(name, None)
        labels[name] = value
    # Explicit labels were inserted last; keep them when over the broker's limit.
    return dict(list(labels.items())[-MAX_LABELS:])


def request_body(
    profile: str,
    *,
    scopes: list[str] | None = None,
    min_ttl: int = 0,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/token``."""
    body: dict[str, Any] = {"profile": profile, "min_ttl": min_ttl}
    if scopes:
        body["scopes"] = list(scopes)
    if labels:
        body["labels"] = dict(labels)
    return body


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return retry_after_seconds(headers.get("retry-after"), now=time.time())


def parse_response(status: int, headers: Mapping[str, str], content: bytes) -> FetchedToken:
    """The token in a ``/v1/token`` response, or ``ClientError`` with the broker's reason."""
    try:
        data = json.loads(content)
    except ValueError:
        raise ClientError(
            f"broker answered HTTP {status} without JSON",
            status=status,
            retry_after=_retry_after(headers),
        ) from None
    if status != 200:  # noqa: PLR2004
        raise _refusal(status, headers, data)
    try:
        return FetchedToken(
            access_token=str(data["access_token"]),
            expires_in=int(data["expires_in"]),
            scope=str(data.get("scope", "")),
            source=headers.get("token-broker-source", "unknown"),
            body=data,
            token_type=str(data.get("token_type", "Bearer")),
        )
    except (KeyError, TypeError, ValueError):
        raise ClientError("broker answered 200 without a usable token", status=status) from None


def _refusal(status: int, headers: Mapping[str, str], data: object) -> ClientError:
    error = data.get("error", "error") if isinstance(data, dict) else "error"
    detail = data.get("error_description", "") if isinstance(data, dict) else ""
    return ClientError(
        f"broker refused (HTTP {status} {error}): {detail}",
        status=status,
        error=str(error),
        detail=str(detail),
        retry_after=_retry_after(headers),
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: it would carry the credential to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs


def _opener() -> urllib.request.OpenerDirector:
    ca_file = os.environ.get(CA_FILE_VARIABLE, "").strip() or None
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or "not a PEM CA bundle"
        raise ClientError(f"cannot read {CA_FILE_VARIABLE}: {reason}") from None
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect)


def https_opener() -> urllib.request.OpenerDirector:
    """An opener that verifies TLS as the runner does (``TOKEN_BROKER_CA_FILE``) and never
    follows a redirect; ``ClientError`` when the CA file cannot be read."""
    return _opener()


def _call(
    url: str,
    credential: str,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
    timeout: float,
) -> tuple[int, dict[str, str], bytes]:
    """One request to the broker: status, lower-cased headers and body, or ``ClientError``."""
    if urlsplit(url).scheme not in {"http", "https"}:
        # urllib would also open file: and ftp: URLs, with the credential attached.
        raise ClientError(f"cannot ask {url}: the broker URL must be http:// or https://")
    target = url.rstrip("/") + path
    if params:
        target += "?" + urlencode(dict(params))
    headers = {"Authorization": f"Bearer {credential}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        request = urllib.request.Request(  # noqa: S310 (scheme checked above)
            target, data=data, headers=headers, method=method
        )
        with _opener().open(request, timeout=timeout) as response:
            return response.status, _lower(response.headers), response.read(_MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _lower(exc.headers), exc.read(_MAX_ANSWER_BYTES)
    except urllib.error.URLError as exc:
        reason = exc.reason
        name = reason if isinstance(reason, str) else type(reason).__name__
        raise ClientError(f"broker unreachable at {url}: {name}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ClientError(f"broker unreachable at {url}: {type(exc).__name__}") from None
    except ValueError:
        # An unknown URL scheme, or a credential that no HTTP header can carry; neither
        # message may quote the credential.
        raise ClientError(
            f"cannot ask {url}: a malformed URL, or a credential that is not header-safe text"
        ) from None


def _lower(headers: Any) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in headers.items()}


def admin_call(
    url: str,
    credential: str,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One admin API call (``GET /v1/profiles`` ...): its JSON object, or ``ClientError``."""
    status, headers, content = _call(url, credential, method, path, params=params, timeout=timeout)
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if status != 200:  # noqa: PLR2004
        raise _refusal(status, headers, data)
    if not isinstance(data, dict):
        raise ClientError("broker answered 200 without a JSON object", status=200)
    return data


def fetch_token(
    url: str,
    credential: str,
    *,
    profile: str,
    scopes: list[str] | None = None,
    min_ttl: int = 0,
    labels: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> FetchedToken:
    """``POST /v1/token``; raises ``ClientError`` with the broker's error description."""
    body = request_body(profile, scopes=scopes, min_ttl=min_ttl, labels=labels)
    status, headers, content = _call(
        url, credential, "POST", "/v1/token", body=body, timeout=timeout
    )
    return parse_response(status, headers, content)


async def afetch_token(
    url: str,
    credential: str,
    *,
    profile: str,
    scopes: list[str] | None = None,
    min_ttl: int = 0,
    labels: Mapping[str, str] | None = None,
    request_timeout: float = 30.0,
) -> FetchedToken:
    """``fetch_token`` in a worker thread, so the sidecar's event loop keeps serving."""
    return await asyncio.to_thread(
        fetch_token,
        url,
        credential,
        profile=profile,
        scopes=scopes,
        min_ttl=min_ttl,
        labels=labels,
        timeout=request_timeout,
    )


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 from the first byte.

    A temporary file in the same directory (mkstemp creates it 0600, so no other user can
    open it even for a moment), fsynced, then renamed over ``path``: a reader sees the old
    content or the new, never a partial token, and never a file with wider permissions.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename is durable only once the directory entry is; best effort on odd filesystems.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
