"""Runner-side client: asks a running broker for a token (used by ``token-broker token``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """The broker could not be asked, or said no; the message is safe to print."""


@dataclass(frozen=True)
class FetchedToken:
    """The broker's answer."""

    access_token: str
    expires_in: int
    scope: str
    source: str
    body: Mapping[str, Any]


def credential_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """``TOKEN_BROKER_CREDENTIAL`` or the file named by ``TOKEN_BROKER_CREDENTIAL_FILE``."""
    value = environ.get("TOKEN_BROKER_CREDENTIAL", "").strip()
    if value:
        return value
    path = environ.get("TOKEN_BROKER_CREDENTIAL_FILE")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ClientError(f"cannot read TOKEN_BROKER_CREDENTIAL_FILE: {exc.strerror}") from None
        if value:
            return value
    raise ClientError("set TOKEN_BROKER_CREDENTIAL or TOKEN_BROKER_CREDENTIAL_FILE")


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
    body: dict[str, Any] = {"profile": profile, "min_ttl": min_ttl}
    if scopes:
        body["scopes"] = scopes
    if labels:
        body["labels"] = dict(labels)
    try:
        response = httpx2.post(
            url.rstrip("/") + "/v1/token",
            json=body,
            headers={"Authorization": f"Bearer {credential}"},
            timeout=timeout,
        )
    except httpx2.HTTPError as exc:
        raise ClientError(f"broker unreachable at {url}: {type(exc).__name__}") from None
    try:
        data = response.json()
    except ValueError:
        raise ClientError(f"broker answered HTTP {response.status_code} without JSON") from None
    if response.status_code != 200:  # noqa: PLR2004
        error = data.get("error", "error") if isinstance(data, dict) else "error"
        detail = data.get("error_description", "") if isinstance(data, dict) else ""
        raise ClientError(f"broker refused (HTTP {response.status_code} {error}): {detail}")
    return FetchedToken(
        access_token=data["access_token"],
        expires_in=int(data["expires_in"]),
        scope=data.get("scope", ""),
        source=response.headers.get("token-broker-source", "unknown"),
        body=data,
    )
