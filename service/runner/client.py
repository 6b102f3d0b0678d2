"""Runner-side HTTP client: asks a running broker for a token (``token``, ``exec``, ``sidecar``).

Also carries ``token-broker admin``'s calls, so both authenticate the same way.

Kept light on purpose (no FastAPI, pydantic or broker config imports): it runs in every
Airflow task and ingestion pod, where start-up time is paid on every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

DEFAULT_URL = "http://127.0.0.1:8080"
# Where a pod mounts its projected service-account token for the broker (a projected volume
# with `audience: token-broker`). We deliberately do NOT fall back to the generic
# /var/run/secrets/kubernetes.io/serviceaccount/token: that token is a credential for the
# Kubernetes API server, and sending it to any other service hands that service the pod's
# API access. Only a token minted for the broker's audience may leave the pod.
DEFAULT_CREDENTIAL_PATH = Path("/var/run/secrets/token-broker/token")

# The same rule as service.config.load.NAME_PATTERN (a unit test pins that they agree); copied so
# the runner does not import the broker's configuration stack.
LABEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
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


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    return None


def parse_response(status: int, headers: Mapping[str, str], content: bytes) -> FetchedToken:
    """The token in a ``/v1/token`` response, or ``ClientError`` with the broker's reason."""
    try:
        data = json.loads(content)
    except ValueError:
        raise ClientError(
            f"broker answered HTTP {status} without JSON",
            status=status,
            retry_after=_retry_after(headers.get("retry-after")),
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
        retry_after=_retry_after(headers.get("retry-after")),
    )


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
    try:
        response = httpx2.request(
            method,
            url.rstrip("/") + path,
            params=dict(params or {}),
            headers={"Authorization": f"Bearer {credential}"},
            timeout=timeout,
        )
    except httpx2.HTTPError as exc:
        raise ClientError(f"broker unreachable at {url}: {type(exc).__name__}") from None
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if response.status_code != 200:  # noqa: PLR2004
        raise _refusal(response.status_code, response.headers, data)
    if not isinstance(data, dict):
        raise ClientError("broker answered 200 without a JSON object", status=200)
    return data


def _token_request(url: str, credential: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "url": url.rstrip("/") + "/v1/token",
        "json": body,
        "headers": {"Authorization": f"Bearer {credential}"},
    }


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
    request = _token_request(
        url, credential, request_body(profile, scopes=scopes, min_ttl=min_ttl, labels=labels)
    )
    try:
        response = httpx2.post(**request, timeout=timeout)
    except httpx2.HTTPError as exc:
        raise ClientError(f"broker unreachable at {url}: {type(exc).__name__}") from None
    return parse_response(response.status_code, response.headers, response.content)


async def afetch_token(
    client: httpx2.AsyncClient,
    url: str,
    credential: str,
    *,
    profile: str,
    scopes: list[str] | None = None,
    min_ttl: int = 0,
    labels: Mapping[str, str] | None = None,
    request_timeout: float = 30.0,
) -> FetchedToken:
    """``fetch_token`` on an async client (the sidecar's event loop)."""
    request = _token_request(
        url, credential, request_body(profile, scopes=scopes, min_ttl=min_ttl, labels=labels)
    )
    try:
        response = await client.post(**request, timeout=request_timeout)
    except httpx2.HTTPError as exc:
        raise ClientError(f"broker unreachable at {url}: {type(exc).__name__}") from None
    return parse_response(response.status_code, response.headers, response.content)


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
