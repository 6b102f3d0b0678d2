"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, field_validator

from service.config.schema import Name
from service.core import scopes
from service.durations import parse_duration

MAX_LABELS = 16
LabelValue = Annotated[str, StringConstraints(max_length=256)]
# One scope token, with whitespace around it allowed (and dropped); "" and " " are blank.
ScopeEntry = Annotated[str, StringConstraints(max_length=256)]


class TokenBody(BaseModel):
    """``POST /v1/token``."""

    model_config = ConfigDict(extra="forbid")

    profile: Name
    scopes: list[ScopeEntry] | None = Field(
        default=None,
        max_length=scopes.MAX_SCOPES,
        description="Scope tokens; absent, empty or blank means all of the grant's scopes.",
    )
    min_ttl: StrictInt | str = Field(
        default=0,
        description="Seconds (or 90m, 4h) the token must still be valid for when handed out.",
    )
    labels: dict[Name, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)

    @field_validator("min_ttl")
    @classmethod
    def _duration(cls, value: int | str) -> int:
        return parse_duration(value)


# What each field of TokenBody expects, for its 400s: the expected form, never the input.
TOKEN_BODY_HINTS: Mapping[str, str] = {
    "profile": "a profile name: letters, digits, '.', '_', '-' (max 64), e.g. ingestion",
    "scopes": f'a list of at most {scopes.MAX_SCOPES} scope tokens, e.g. ["read"]',
    "min_ttl": "seconds, or a duration like 90m or 4h",
    "labels": (
        f"a mapping of at most {MAX_LABELS} label names (letters, digits, '.', '_', '-') "
        "to text of at most 256 characters"
    ),
}


class TokenResponse(BaseModel):
    """A token handed out by ``POST /v1/token``."""

    access_token: str
    token_type: str
    expires_in: int
    expires_at: int
    scope: str
    profile: str
    max_ttl: int | None = None


class OAuth2TokenResponse(BaseModel):
    """RFC 6749 section 5.1 success response."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str


class ErrorBody(BaseModel):
    """RFC 6749 section 5.2 error response, used for every error."""

    error: str
    error_description: str


# The documented refusals of the token endpoints and the admin API (OpenAPI ``responses``).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Malformed request (invalid_request, unsupported_grant_type).",
        401: "Caller not authenticated (invalid_client).",
        403: "Policy refused (unauthorized_client, invalid_scope).",
        413: "Request body too large.",
        429: "Too many requests from this caller or address; see Retry-After.",
        502: "The issuer refused the exchange.",
        503: "The issuer is unreachable and no cached token can stand in.",
    }.items()
}
