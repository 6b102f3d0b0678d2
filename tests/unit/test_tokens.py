"""Token endpoint responses are validated before anything is cached."""

from __future__ import annotations

import base64
import json

import pytest

from service.errors import UpstreamError
from service.upstream.tokens import jwt_expiry, token_from_response


def _jwt(claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_expires_in_sets_expiry() -> None:
    """expires_in counts from the time of receipt; bearer is normalised."""
    token = token_from_response(
        {"access_token": "abc", "token_type": "bearer", "expires_in": 300},
        now=1000.0,
        requested_scopes=("a",),
    )
    assert (token.expires_at, token.token_type, token.scope) == (1300.0, "Bearer", "a")


def test_numeric_string_expires_in_is_accepted() -> None:
    """Some issuers send expires_in as a string of digits."""
    token = token_from_response(
        {"access_token": "abc", "expires_in": "60", "scope": "x y"}, now=0.0, requested_scopes=()
    )
    assert (token.lifetime, token.scope) == (60.0, "x y")


def test_jwt_exp_used_without_expires_in() -> None:
    """Without expires_in the JWT's exp claim gives the expiry."""
    token = token_from_response(
        {"access_token": _jwt({"exp": 5000})}, now=1000.0, requested_scopes=()
    )
    assert token.expires_at == 5000.0


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"access_token": ""},
        {"access_token": 5, "expires_in": 60},
        {"access_token": "abc", "expires_in": "soon"},
        {"access_token": "abc", "expires_in": True},
        {"access_token": "abc"},
        {"access_token": "abc", "expires_in": 0},
        {"access_token": "abc", "expires_in": 60, "token_type": 7},
    ],
)
def test_unusable_responses_are_refused(raw: dict[str, object]) -> None:
    """Missing token, non-numeric or absent lifetime, bad type: an UpstreamError, no token."""
    with pytest.raises(UpstreamError):
        token_from_response(raw, now=0.0, requested_scopes=())


@pytest.mark.parametrize("token", ["opaque", "a.b.c", _jwt({"sub": "x"}), _jwt({"exp": "x"})])
def test_jwt_expiry_absent(token: str) -> None:
    """Opaque tokens and JWTs without a numeric exp give no expiry."""
    assert jwt_expiry(token) is None
