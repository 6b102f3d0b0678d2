"""Error-body echo: no caller input, known or unknown to the broker, ever comes back.

Property-based: random parameter names and values (with a marker that cannot occur in the
broker's own texts) are sent to both endpoints, authenticated or not, and looked for in the
whole response.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.attack import OAUTH2, V1, Attack, basic

MARK = "qz7Xv"  # appears in no broker text; every generated input carries it
KNOWN = [
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "resource",
    "audience",
    "min_ttl",
]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Printable text, markup and quotes included, that stays one piece once percent-encoded.
payload = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=24).map(
    lambda text: f"{MARK}{text}"
)
names = st.one_of(payload, st.sampled_from(KNOWN))
# What an HTTP header value can carry: visible Latin-1 and spaces, no control characters.
header_text = st.text(
    alphabet=st.characters(
        min_codepoint=0x20,
        max_codepoint=0xFF,
        exclude_characters="".join(map(chr, range(0x7F, 0xA0))),
    ),
    max_size=40,
).map(lambda text: f"{MARK}{text}")


def _encode(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def _marked(pairs: list[tuple[str, str]]) -> list[str]:
    return [text for pair in pairs for text in pair if MARK in text]


@SETTINGS
@given(
    pairs=st.lists(st.tuples(names, payload), min_size=1, max_size=6),
    authenticated=st.booleans(),
)
async def test_form_input_never_echoed(
    attack: Attack, pairs: list[tuple[str, str]], authenticated: bool
) -> None:
    """Property: random form names and values at /oauth2/token never appear in the answer."""
    headers = [basic("reader", attack.key("reader"))] if authenticated else []
    # The credential in the header is the only client authentication sent.
    body = (
        _encode([("grant_type", "client_credentials"), *pairs]) if authenticated else _encode(pairs)
    )
    response = await attack.form(body, headers=headers, echo=_marked(pairs))
    if response.status_code == 200:
        assert response.json()["scope"] == "read"


@SETTINGS
@given(
    fields=st.dictionaries(
        st.one_of(payload, st.sampled_from(["profile", "scopes", "min_ttl", "labels"])),
        payload,
        max_size=5,
    ),
    labels=st.dictionaries(payload, payload, max_size=3),
    scopes=st.lists(payload, max_size=3),
)
async def test_json_input_never_echoed(
    attack: Attack, fields: dict[str, str], labels: dict[str, str], scopes: list[str]
) -> None:
    """Property: random JSON fields, labels and scopes at /v1/token never appear in the answer."""
    body: dict[str, object] = {"profile": "ingestion", **fields}
    if labels:
        body["labels"] = labels
    if scopes:
        body["scopes"] = scopes
    echo = [t for t in (*fields, *fields.values(), *labels, *labels.values(), *scopes) if MARK in t]
    await attack.v1(body, echo=echo)


@SETTINGS
@given(credential=header_text, scheme=st.sampled_from(["Bearer", "Basic", "bearer", "Token", ""]))
async def test_credentials_never_echoed(attack: Attack, credential: str, scheme: str) -> None:
    """Property: whatever credential is presented, no part of it comes back; 0 issuer calls."""
    value = f"{scheme} {credential}".strip()
    for path, content in (
        (V1, json.dumps({"profile": "ingestion"})),
        (OAUTH2, "grant_type=client_credentials"),
    ):
        content_type = "application/json" if path == V1 else "application/x-www-form-urlencoded"
        response = await attack.send(
            path,
            headers=[("Authorization", value.encode("latin-1")), ("Content-Type", content_type)],
            content=content,
            echo=[credential, value],
        )
        # 429 once the failed-authentication throttle for this address kicks in.
        assert response.status_code in {400, 401, 429}
    assert attack.issuer_calls == 0


@SETTINGS
@given(profile=payload, resource=payload)
async def test_unknown_profiles_and_targets_never_echoed(
    attack: Attack, profile: str, resource: str
) -> None:
    """Property: profile, resource and audience names the broker does not know never come back."""
    await attack.v1({"profile": profile}, echo=[profile])
    for name in ("resource", "audience"):
        await attack.form(
            _encode([("grant_type", "client_credentials"), (name, resource)]),
            headers=[basic("airflow", attack.key())],
            echo=[resource],
        )
    assert attack.issuer_calls == 0
