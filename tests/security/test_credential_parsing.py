"""Credential parsing: odd, broken and look-alike credentials are refused cleanly, for free.

Every case is a 4xx with an RFC 6749 body, costs no issuer call and echoes nothing.
"""

from __future__ import annotations

import base64

import pytest

from tests.support.attack import OAUTH2, V1, Attack

JWT_SHAPED = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhaXJmbG93In0."


def _b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer",
        b"Bearer ",
        b"Bearer\ttbk_a_b",
        b"Bearer tbk_",
        b"Bearer tbk__",
        b"Bearer tbk_zq8Rk",
        b"Bearer tbk_zq8Rk_" + b"A" * 4000,
        b"Bearer " + JWT_SHAPED.encode(),
        b"Bearer a.b.c",
        b"Bearer zq8Rk\xe9\xff",
        b"Basic " + _b64(b"airflow:zq8Rk").encode(),
        b"Token zq8Rk",
        b"zq8Rk",
    ],
    ids=[
        "bare-scheme",
        "empty",
        "tab",
        "prefix-only",
        "no-id",
        "no-secret",
        "huge",
        "alg-none-jwt",
        "dotted",
        "latin1",
        "basic-at-v1",
        "other-scheme",
        "no-scheme",
    ],
)
async def test_bearer_look_alikes_are_401(attack: Attack, value: bytes) -> None:
    """Attack: malformed or forged Bearer credentials at /v1/token; 401, no echo, no issuer call."""
    response = await attack.send(
        V1,
        headers=[("Authorization", value), ("Content-Type", "application/json")],
        content=b'{"profile": "ingestion"}',
        echo=["zq8Rk", JWT_SHAPED],
    )
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert attack.issuer_calls == 0


@pytest.mark.parametrize(
    "value",
    [
        "Basic",
        "Basic !!!",
        "Basic " + _b64(b"no-colon-zq8Rk"),
        "Basic " + _b64(b"\xff\xfe:zq8Rk"),
        "Basic " + _b64(b"airflow:zq8Rk"),
        "Basic " + _b64(b"nobody:zq8Rk"),
        "Basic " + _b64(b":zq8Rk"),
        "Basic " + _b64(b"airflow:"),
        "Basic " + _b64(b"air%00flow:zq8Rk"),
        "Basic zq8Rk\u00e9",
    ],
    ids=[
        "bare",
        "not-base64",
        "no-colon",
        "not-utf8",
        "wrong-secret",
        "unknown-client",
        "empty-id",
        "empty-secret",
        "nul-in-id",
        "latin1",
    ],
)
async def test_basic_look_alikes_are_401(attack: Attack, value: str) -> None:
    """Attack: malformed or wrong Basic credentials at the facade; 401 + Basic challenge."""
    response = await attack.send(
        OAUTH2,
        headers=[
            ("Authorization", value.encode("latin-1")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        content="grant_type=client_credentials",
        echo=["zq8Rk", "nobody"],
    )
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic")
    assert attack.issuer_calls == 0


async def test_another_callers_key_under_a_name_is_401(attack: Attack) -> None:
    """Attack: reader's valid key presented as client_id=airflow; 401, never reader's grant."""
    response = await attack.form(
        f"grant_type=client_credentials&client_id=airflow&client_secret={attack.key('reader')}"
    )
    assert response.status_code == 401
    assert attack.issuer_calls == 0


async def test_client_id_disagreeing_with_basic_is_400(attack: Attack) -> None:
    """Attack: Basic for airflow with client_id=reader in the body; 400, neither identity used."""
    encoded = _b64(f"airflow:{attack.key()}".encode())
    response = await attack.form(
        "grant_type=client_credentials&client_id=reader",
        headers=[("Authorization", f"Basic {encoded}")],
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert attack.issuer_calls == 0


async def test_unsigned_assertion_is_401(attack: Attack) -> None:
    """Attack: an alg=none client_assertion naming a caller; 401, no issuer call."""
    response = await attack.form(
        "grant_type=client_credentials&client_assertion_type="
        "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
        f"&client_assertion={JWT_SHAPED}",
        echo=[JWT_SHAPED],
    )
    assert response.status_code == 401
    assert attack.issuer_calls == 0
