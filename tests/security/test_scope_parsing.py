"""Scope parsing: a blank scope must never escape the grant, on either endpoint.

The review's finding: ``scope=%20`` got a 200 with ``"scope": ""`` and the issuer was asked
for no scope at all (issuers then grant their defaults, which may exceed the grant).
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.attack import Attack, basic

# Every kind of whitespace Python's str.split() knows, ASCII and Unicode.
WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u00a0", "\u2003", "\u3000"]
BLANKS = ["", " ", "  ", "\t", " \t\r\n ", *WHITESPACE, "\u00a0\u2003"]


def issuer_scopes(attack: Attack) -> list[set[str]]:
    """The scope set of each token request that reached the issuer."""
    return [set(r.form.get("scope", "").split()) for r in attack.issuer.proxy.token_request_log]


def grant_scopes(attack: Attack, caller: str) -> set[str]:
    """What the default config grants ``caller``."""
    return {"read"} if caller == "reader" else set(attack.issuer.scopes)


@pytest.mark.parametrize("blank", BLANKS, ids=[repr(b) for b in BLANKS])
@pytest.mark.parametrize("caller", ["airflow", "reader"])
async def test_blank_form_scope_means_the_grants_scopes(
    attack: Attack, blank: str, caller: str
) -> None:
    """Attack: scope=<whitespace> at /oauth2/token; answered with the grant's scopes, never none."""
    response = await attack.form(
        f"grant_type=client_credentials&scope={quote(blank)}",
        headers=[basic(caller, attack.key(caller))],
    )
    assert response.status_code == 200, response.text
    assert set(response.json()["scope"].split()) == grant_scopes(attack, caller)
    assert all(sent == grant_scopes(attack, caller) for sent in issuer_scopes(attack))


@pytest.mark.parametrize("scopes", [[], [""], [" "], ["\t", "\u00a0"], ["  ", ""]], ids=repr)
async def test_blank_json_scopes_mean_the_grants_scopes(attack: Attack, scopes: list[str]) -> None:
    """Attack: "scopes": [] or blank entries at /v1/token; answered with the grant's scopes."""
    response = await attack.v1({"profile": "ingestion", "scopes": scopes}, key=attack.key("reader"))
    assert response.status_code == 200, response.text
    assert set(response.json()["scope"].split()) == {"read"}
    assert issuer_scopes(attack) == [{"read"}]


async def test_blank_and_absent_share_one_cached_token(attack: Attack) -> None:
    """Attack: a blank request poisoning the cache; blank and absent get one token, one exchange."""
    absent = await attack.form(
        "grant_type=client_credentials", headers=[basic("airflow", attack.key())]
    )
    blank = await attack.form(
        "grant_type=client_credentials&scope=%09", headers=[basic("airflow", attack.key())]
    )
    listed = await attack.v1({"profile": "ingestion", "scopes": [" "]})
    tokens = {r.json()["access_token"] for r in (absent, blank, listed)}
    assert len(tokens) == 1
    assert attack.issuer_calls == 1


@pytest.mark.parametrize("separator", WHITESPACE, ids=[repr(w) for w in WHITESPACE])
async def test_any_whitespace_separates_scopes_and_narrows(attack: Attack, separator: str) -> None:
    """Attack: exotic separators between scopes; they split tokens and never widen the grant."""
    value = quote(f"{separator}read{separator}{separator}ingestion{separator}")
    response = await attack.form(
        f"grant_type=client_credentials&scope={value}", headers=[basic("airflow", attack.key())]
    )
    assert response.status_code == 200, response.text
    assert set(response.json()["scope"].split()) == {"read", "ingestion"}
    assert issuer_scopes(attack) == [{"read", "ingestion"}]


@pytest.mark.parametrize(
    "scope",
    [
        "read,write",  # a comma is part of a token: an unknown scope, not two
        "read+write",
        "read;write",
        "READ",
        "read write admin",
        "openid",
    ],
)
async def test_separators_and_lookalikes_cannot_escalate(attack: Attack, scope: str) -> None:
    """Attack: scopes outside the grant dressed up with separators; 403, no issuer call."""
    response = await attack.form(
        f"grant_type=client_credentials&scope={quote(scope)}",
        headers=[basic("reader", attack.key("reader"))],
        echo=["admin", "READ", "openid", "read,write", "read+write", "read;write"],
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "invalid_scope"
    assert attack.issuer_calls == 0


@pytest.mark.parametrize(
    "scope",
    [
        "r\u00e9ad",  # non-ASCII
        "read\u200bwrite",  # zero-width space is not whitespace
        'read"',
        "read\\",
        "read\x00",
        "read\x7f",
        "x" * 129,
        " ".join(f"s{i}" for i in range(33)),
    ],
    ids=["non-ascii", "zero-width", "quote", "backslash", "nul", "del", "too-long", "too-many"],
)
async def test_malformed_scopes_are_refused_on_both_endpoints(attack: Attack, scope: str) -> None:
    """Attack: malformed scope tokens; 403 invalid_scope (form), 400 (JSON), no issuer call."""
    form = await attack.form(
        f"grant_type=client_credentials&scope={quote(scope)}",
        headers=[basic("airflow", attack.key())],
        echo=[scope],
    )
    listed = await attack.v1({"profile": "ingestion", "scopes": scope.split(" ")}, echo=[scope])
    assert (form.status_code, form.json()["error"]) == (403, "invalid_scope")
    assert (listed.status_code, listed.json()["error"]) == (400, "invalid_request")
    assert attack.issuer_calls == 0


async def test_a_list_entry_cannot_carry_two_scopes(attack: Attack) -> None:
    """Attack: "scopes": ["read write"] smuggling a second scope into one entry; 400."""
    response = await attack.v1({"profile": "ingestion", "scopes": ["read write"]})
    assert response.status_code == 400
    assert attack.issuer_calls == 0


async def test_repeated_scopes_collapse(attack: Attack) -> None:
    """Attack: the same scope many times; one scope set, one cache entry, one exchange."""
    first = await attack.v1({"profile": "ingestion", "scopes": ["read", "read", " read "]})
    second = await attack.form(
        "grant_type=client_credentials&scope=read%20read%09read",
        headers=[basic("airflow", attack.key())],
    )
    assert first.json()["access_token"] == second.json()["access_token"]
    assert issuer_scopes(attack) == [{"read"}]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blank=st.text(alphabet=st.sampled_from(WHITESPACE), max_size=12))
async def test_no_whitespace_only_scope_reaches_the_issuer_without_scopes(
    attack: Attack, blank: str
) -> None:
    """Property: any whitespace-only scope is answered with the grant's scopes, never none."""
    response = await attack.form(
        f"grant_type=client_credentials&scope={quote(blank)}",
        headers=[basic("reader", attack.key("reader"))],
    )
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "read"
    assert all(sent == {"read"} for sent in issuer_scopes(attack))
