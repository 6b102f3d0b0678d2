"""Duplicated headers, parameters and credentials: refused, never resolved by picking one.

The review's findings: two ``Authorization`` headers were accepted (the first won), and a
repeated form parameter's name was echoed back unauthenticated.
"""

from __future__ import annotations

import pytest

from tests.support.attack import FORM, OAUTH2, V1, Attack, basic

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FAKE_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


async def test_two_authorization_headers_at_v1_are_400(attack: Attack) -> None:
    """Attack: a valid and a bogus Authorization header, in either order; 400 both ways."""
    good, bad = f"Bearer {attack.key()}", "Bearer tbk_x_forged"
    for pair in ((good, bad), (bad, good), (good, good)):
        response = await attack.send(
            V1,
            headers=[("Authorization", pair[0]), ("Authorization", pair[1])],
            json={"profile": "ingestion"},
        )
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert attack.issuer_calls == 0


async def test_two_authorization_headers_at_oauth2_are_400(attack: Attack) -> None:
    """Attack: two Basic credentials at the facade; 400, neither is tried."""
    response = await attack.form(
        "grant_type=client_credentials",
        headers=[basic("reader", attack.key("reader")), basic("airflow", attack.key())],
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert attack.issuer_calls == 0


@pytest.mark.parametrize(
    ("extra_headers", "body"),
    [
        ("basic", "grant_type=client_credentials&client_id=airflow&client_secret={key}"),
        (
            "basic",
            (
                f"grant_type=client_credentials&client_assertion_type={ASSERTION_TYPE}"
                f"&client_assertion={FAKE_JWT}"
            ),
        ),
        (
            "none",
            (
                "grant_type=client_credentials&client_id=airflow&client_secret={key}"
                f"&client_assertion_type={ASSERTION_TYPE}&client_assertion={FAKE_JWT}"
            ),
        ),
        ("empty", "grant_type=client_credentials&client_id=airflow&client_secret={key}"),
        ("bearer", "grant_type=client_credentials&client_id=airflow&client_secret={key}"),
    ],
    ids=["basic+post", "basic+assertion", "post+assertion", "empty-header+post", "bearer+post"],
)
async def test_two_client_credentials_are_400(
    attack: Attack, extra_headers: str, body: str
) -> None:
    """Attack: two client authentication methods in one request; 400 invalid_request."""
    headers = {
        "basic": [basic("airflow", attack.key())],
        "none": [],
        "empty": [("Authorization", "")],
        "bearer": [("Authorization", f"Bearer {attack.key()}")],
    }[extra_headers]
    response = await attack.form(body.format(key=attack.key()), headers=headers)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert attack.issuer_calls == 0


@pytest.mark.parametrize(
    "body",
    [
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=client_credentials&scope=read&scope=write",
        "grant_type=client_credentials&client_id=airflow&client_id=reader",
        "grant_type=client_credentials&zq8RkUnknownName=1&zq8RkUnknownName=2",
        "grant_type=client_credentials&%3Cscript%3Ezq8Rk=1&%3Cscript%3Ezq8Rk=2",
    ],
    ids=["grant_type", "scope", "client_id", "unknown-name", "markup-name"],
)
async def test_repeated_form_parameters_are_400_without_the_name(attack: Attack, body: str) -> None:
    """Attack: a repeated parameter (known or not); 400, its name never comes back."""
    response = await attack.form(
        body, headers=[basic("airflow", attack.key())], echo=["zq8Rk", "<script>", "&lt;script"]
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert attack.issuer_calls == 0


async def test_repeated_parameter_is_refused_before_authentication(attack: Attack) -> None:
    """Attack: unauthenticated probing with repeated names; 400 with a fixed description."""
    first = await attack.form("a=1&a=2", echo=["a=1"])
    second = await attack.form("zq8RkProbe=1&zq8RkProbe=1", echo=["zq8Rk"])
    assert first.json() == second.json()


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("Content-Type", ("application/json", "application/json")),
        ("Content-Type", ("application/json", FORM)),
        ("Host", ("broker", "evil.example")),
    ],
)
async def test_repeated_framing_headers_are_400(
    attack: Attack, name: str, values: tuple[str, str]
) -> None:
    """Attack: a second Content-Type or Host to confuse parsing; 400 invalid_request."""
    response = await attack.send(
        V1,
        headers=[("Authorization", f"Bearer {attack.key()}"), *((name, v) for v in values)],
        content=b'{"profile": "ingestion"}',
        echo=["evil.example"],
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    response = await attack.send(
        OAUTH2,
        headers=[basic("airflow", attack.key()), *((name, v) for v in values)],
        content=b"grant_type=client_credentials",
    )
    assert response.status_code == 400
    assert attack.issuer_calls == 0


async def test_assertion_type_without_assertion_is_400(attack: Attack) -> None:
    """Attack: half of an RFC 7523 assertion next to a secret; 400, not silently ignored."""
    response = await attack.form(
        f"grant_type=client_credentials&client_assertion_type={ASSERTION_TYPE}",
        headers=[basic("airflow", attack.key())],
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert attack.issuer_calls == 0
