"""Bad input never reaches the issuer and always gets a clean RFC 6749 error.

Every malformed request class against ``POST /v1/token`` and the ``POST /oauth2/token``
facade must come back as a 4xx with exactly ``{"error", "error_description"}``, an RFC 6749
error code, ``Cache-Control: no-store``, no stack trace, and no echo of any secret that was
sent. The real issuer sits behind a counting proxy: no rejected request may reach its token
endpoint.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support import OidcProvider
from tests.support.broker import BrokerFiles, bearer, new_key, running_broker

V1 = "/v1/token"
OAUTH2 = "/oauth2/token"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
RFC6749_CODES = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "unauthorized_client",
        "invalid_scope",
        "unsupported_grant_type",
    }
)
MAX_BODY = 16_384  # Settings.max_body_bytes default
CLIENT_CREDENTIALS = {"grant_type": "client_credentials"}

Content = bytes | AsyncIterator[bytes] | None


@dataclass
class Sent:
    """One request to make, and the secrets it carries (which must never come back)."""

    headers: dict[str, str]
    content: Content = None
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    """A malformed request and the error it must produce."""

    id: str
    path: str
    build: Callable[[BrokerFiles], Sent]
    status: int
    error: str
    method: str = "POST"
    challenge: str | None = None  # expected WWW-Authenticate scheme on a 401
    extra_headers: dict[str, str] = field(default_factory=dict)


# -- request builders ---------------------------------------------------------------------


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def v1_raw(
    content: Content | Callable[[], Content],
    *,
    content_type: str | None = JSON,
    caller: str = "airflow",
) -> Callable[[BrokerFiles], Sent]:
    """A ``/v1/token`` request authenticated as ``caller`` with a raw body."""

    def build(files: BrokerFiles) -> Sent:
        headers = bearer(files.keys[caller])
        if content_type is not None:
            headers["Content-Type"] = content_type
        body = content() if callable(content) else content
        return Sent(headers=headers, content=body)

    return build


def v1_json(body: object, *, caller: str = "airflow") -> Callable[[BrokerFiles], Sent]:
    """A ``/v1/token`` JSON request authenticated as ``caller``."""
    return v1_raw(json.dumps(body).encode(), caller=caller)


def v1_auth(authorization: Callable[[BrokerFiles], Sent]) -> Callable[[BrokerFiles], Sent]:
    """A valid ``/v1/token`` body with the headers (and sent secrets) ``authorization`` gives."""

    def build(files: BrokerFiles) -> Sent:
        sent = authorization(files)
        sent.headers["Content-Type"] = JSON
        sent.content = json.dumps({"profile": "ingestion"}).encode()
        return sent

    return build


def v1_secret_in_body(make: Callable[[str], object]) -> Callable[[BrokerFiles], Sent]:
    """A ``/v1/token`` JSON body that carries airflow's own API key in a malformed field."""

    def build(files: BrokerFiles) -> Sent:
        key = files.keys["airflow"]
        return Sent(
            headers={**bearer(key), "Content-Type": JSON},
            content=json.dumps(make(key)).encode(),
            secrets=(key,),
        )

    return build


def form(
    params: Callable[[BrokerFiles], str] | str,
    *,
    auth: str = "basic",
    caller: str = "airflow",
    content_type: str = FORM,
) -> Callable[[BrokerFiles], Sent]:
    """An ``/oauth2/token`` request; ``auth`` is ``basic`` (caller's key) or ``none``."""

    def build(files: BrokerFiles) -> Sent:
        headers = {"Content-Type": content_type}
        if auth == "basic":
            headers["Authorization"] = _basic(caller, files.keys[caller])
        body = params(files) if callable(params) else params
        return Sent(headers=headers, content=body.encode())

    return build


def form_post_auth(
    client_id: str, secret: Callable[[BrokerFiles], str], extra: str = ""
) -> Callable[[BrokerFiles], Sent]:
    """``client_secret_post`` authentication: credentials in the form body."""

    def build(files: BrokerFiles) -> Sent:
        value = secret(files)
        body = httpx.QueryParams(
            {**CLIENT_CREDENTIALS, "client_id": client_id, "client_secret": value}
        )
        return Sent(
            headers={"Content-Type": FORM},
            content=(str(body) + extra).encode(),
            secrets=(value,),
        )

    return build


def form_header_auth(
    header: Callable[[BrokerFiles], tuple[str, tuple[str, ...]]],
) -> Callable[[BrokerFiles], Sent]:
    """A valid client-credentials form with the Authorization header ``header`` gives."""

    def build(files: BrokerFiles) -> Sent:
        value, sent_secrets = header(files)
        return Sent(
            headers={"Content-Type": FORM, "Authorization": value},
            content=b"grant_type=client_credentials",
            secrets=sent_secrets,
        )

    return build


def _unknown_key(files: BrokerFiles) -> Sent:
    key = new_key("ghost")
    return Sent(headers=bearer(key), secrets=(key,))


def _oversized_json() -> bytes:
    return json.dumps({"profile": "ingestion", "labels": {"a": "x" * (MAX_BODY * 2)}}).encode()


def _chunked_oversized() -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"profile": "ingestion", "labels": {"a": "'
        for _ in range(MAX_BODY * 4 // 4096):
            yield b"x" * 4096
        yield b'"}}'

    return chunks()


def _chunked_oversized_form() -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"grant_type=client_credentials&scope="
        for _ in range(MAX_BODY * 4 // 4096):
            yield b"x" * 4096

    return chunks()


def _chunked_form(files: BrokerFiles) -> Sent:
    return Sent(
        headers={"Content-Type": FORM, "Authorization": _basic("airflow", files.keys["airflow"])},
        content=_chunked_oversized_form(),
    )


# -- the matrix -----------------------------------------------------------------------------

V1_CASES = [
    # Authentication (401 + WWW-Authenticate: Bearer).
    Case(
        "v1-no-authorization",
        V1,
        v1_auth(lambda f: Sent({})),
        401,
        "invalid_client",
        challenge="Bearer",
    ),
    Case(
        "v1-basic-scheme",
        V1,
        v1_auth(
            lambda f: Sent(
                {"Authorization": _basic("airflow", f.keys["airflow"])},
                secrets=(f.keys["airflow"],),
            )
        ),
        401,
        "invalid_client",
        challenge="Bearer",
    ),
    Case(
        "v1-empty-bearer",
        V1,
        v1_auth(lambda f: Sent({"Authorization": "Bearer "})),
        401,
        "invalid_client",
        challenge="Bearer",
    ),
    Case(
        "v1-bare-bearer",
        V1,
        v1_auth(lambda f: Sent({"Authorization": "Bearer"})),
        401,
        "invalid_client",
        challenge="Bearer",
    ),
    Case(
        "v1-malformed-key",
        V1,
        v1_auth(
            lambda f: Sent(
                {"Authorization": "Bearer not-a-key-s3cr3t"}, secrets=("not-a-key-s3cr3t",)
            )
        ),
        401,
        "invalid_client",
        challenge="Bearer",
    ),
    Case("v1-unknown-key", V1, v1_auth(_unknown_key), 401, "invalid_client", challenge="Bearer"),
    # Body shape (400 invalid_request).
    Case("v1-not-json", V1, v1_raw(b"profile=ingestion"), 400, "invalid_request"),
    Case("v1-json-array", V1, v1_json(["ingestion"]), 400, "invalid_request"),
    Case("v1-json-string", V1, v1_json("ingestion"), 400, "invalid_request"),
    Case("v1-json-null", V1, v1_json(None), 400, "invalid_request"),
    # "scopes": [] is no longer bad input: blank means the grant's scopes, never an issuer
    # request without scope (tests/security/test_scope_parsing.py pins it).
    Case("v1-empty-body", V1, v1_raw(b""), 400, "invalid_request"),
    Case(
        "v1-form-content-type",
        V1,
        v1_raw(b"profile=ingestion", content_type=FORM),
        400,
        "invalid_request",
    ),
    Case(
        "v1-no-content-type",
        V1,
        v1_raw(b'{"profile": "ingestion"}', content_type=None),
        400,
        "invalid_request",
    ),
    Case(
        "v1-unknown-field",
        V1,
        v1_json({"profile": "ingestion", "audience": "x"}),
        400,
        "invalid_request",
    ),
    Case("v1-missing-profile", V1, v1_json({"scopes": ["read"]}), 400, "invalid_request"),
    Case("v1-profile-int", V1, v1_json({"profile": 7}), 400, "invalid_request"),
    Case("v1-profile-list", V1, v1_json({"profile": ["ingestion"]}), 400, "invalid_request"),
    Case("v1-profile-null", V1, v1_json({"profile": None}), 400, "invalid_request"),
    Case("v1-profile-path", V1, v1_json({"profile": "../ingestion"}), 400, "invalid_request"),
    Case("v1-profile-space", V1, v1_json({"profile": "inges tion"}), 400, "invalid_request"),
    Case("v1-profile-empty", V1, v1_json({"profile": ""}), 400, "invalid_request"),
    Case("v1-profile-too-long", V1, v1_json({"profile": "p" * 65}), 400, "invalid_request"),
    Case(
        "v1-scopes-string",
        V1,
        v1_json({"profile": "ingestion", "scopes": "read"}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-scopes-dict",
        V1,
        v1_json({"profile": "ingestion", "scopes": {"read": 1}}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-scope-with-space",
        V1,
        v1_json({"profile": "ingestion", "scopes": ["read write"]}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-scope-non-ascii",
        V1,
        v1_json({"profile": "ingestion", "scopes": ["l\u00e9ire"]}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-scope-quote",
        V1,
        v1_json({"profile": "ingestion", "scopes": ['re"ad']}),
        400,
        "invalid_request",
    ),
    # "scopes": [""] is blank: the grant's scopes (tests/security/test_scope_parsing.py).
    Case(
        "v1-scope-int", V1, v1_json({"profile": "ingestion", "scopes": [1]}), 400, "invalid_request"
    ),
    Case(
        "v1-too-many-scopes",
        V1,
        v1_json({"profile": "ingestion", "scopes": [f"s{i}" for i in range(33)]}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-negative",
        V1,
        v1_json({"profile": "ingestion", "min_ttl": -1}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-words",
        V1,
        v1_json({"profile": "ingestion", "min_ttl": "soon"}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-fraction",
        V1,
        v1_json({"profile": "ingestion", "min_ttl": 1.5}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-huge",
        V1,
        v1_json({"profile": "ingestion", "min_ttl": 10**30}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-1e308",
        V1,
        v1_raw(b'{"profile": "ingestion", "min_ttl": 1e308}'),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-true",
        V1,
        v1_json({"profile": "ingestion", "min_ttl": True}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-false",
        V1,
        v1_json({"profile": "ingestion", "min_ttl": False}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-list",
        V1,
        v1_json({"profile": "ingestion", "min_ttl": [60]}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-min-ttl-over-grant",
        V1,
        v1_json({"profile": "ingestion", "min_ttl": "5h"}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-labels-list",
        V1,
        v1_json({"profile": "ingestion", "labels": ["a"]}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-labels-string",
        V1,
        v1_json({"profile": "ingestion", "labels": "a=b"}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-labels-too-many",
        V1,
        v1_json({"profile": "ingestion", "labels": {f"k{i}": "v" for i in range(17)}}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-label-value-too-long",
        V1,
        v1_json({"profile": "ingestion", "labels": {"dag": "v" * 257}}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-label-value-int",
        V1,
        v1_json({"profile": "ingestion", "labels": {"dag": 1}}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-label-key-bad",
        V1,
        v1_json({"profile": "ingestion", "labels": {"a b": "v"}}),
        400,
        "invalid_request",
    ),
    Case("v1-deeply-nested-array", V1, v1_raw(b"[" * 5000), 400, "invalid_request"),
    Case(
        "v1-deeply-nested-object",
        V1,
        v1_raw(b'{"profile": ' + b'{"a":' * 3000),
        400,
        "invalid_request",
    ),
    Case("v1-invalid-utf8", V1, v1_raw(b'{"profile": "\xff\xfe"}'), 400, "invalid_request"),
    Case("v1-invalid-utf8-bare", V1, v1_raw(b"\xc3\x28\xa0\xa1"), 400, "invalid_request"),
    Case("v1-nul-bytes", V1, v1_raw(b"\x00" * 64), 400, "invalid_request"),
    # Size limits (413): declared up front, and streamed without a Content-Length.
    Case("v1-content-length-over-limit", V1, v1_raw(_oversized_json()), 413, "invalid_request"),
    Case("v1-chunked-over-limit", V1, v1_raw(_chunked_oversized), 413, "invalid_request"),
    # Policy (403).
    Case(
        "v1-no-grant",
        V1,
        v1_json({"profile": "ingestion"}, caller="idle"),
        403,
        "unauthorized_client",
    ),
    Case("v1-unknown-profile", V1, v1_json({"profile": "elsewhere"}), 403, "unauthorized_client"),
    Case(
        "v1-scope-escalation",
        V1,
        v1_json({"profile": "ingestion", "scopes": ["read", "write"]}, caller="reader"),
        403,
        "invalid_scope",
    ),
    # A secret pasted into the wrong field must not come back in the description.
    Case(
        "v1-min-ttl-holding-the-key",
        V1,
        v1_secret_in_body(lambda key: {"profile": "ingestion", "min_ttl": key}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-unknown-field-named-by-the-key",
        V1,
        v1_secret_in_body(lambda key: {"profile": "ingestion", key: 1}),
        400,
        "invalid_request",
    ),
    Case(
        "v1-label-keyed-by-the-key",
        V1,
        v1_secret_in_body(lambda key: {"profile": "ingestion", "labels": {key: "v" * 257}}),
        400,
        "invalid_request",
    ),
]

OAUTH2_CASES = [
    # Client authentication (401 + WWW-Authenticate: Basic).
    Case(
        "oauth2-no-client-auth",
        OAUTH2,
        form("grant_type=client_credentials", auth="none"),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-client-id-without-secret",
        OAUTH2,
        form("grant_type=client_credentials&client_id=airflow", auth="none"),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-basic-not-base64",
        OAUTH2,
        form_header_auth(lambda f: ("Basic !!not*base64!!", ())),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-basic-not-utf8",
        OAUTH2,
        form_header_auth(lambda f: ("Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), ())),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-basic-without-colon",
        OAUTH2,
        form_header_auth(
            lambda f: (
                "Basic " + base64.b64encode(f.keys["airflow"].encode()).decode(),
                (f.keys["airflow"],),
            )
        ),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-bearer-scheme",
        OAUTH2,
        form_header_auth(lambda f: (f"Bearer {f.keys['airflow']}", (f.keys["airflow"],))),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-basic-wrong-secret",
        OAUTH2,
        form_header_auth(lambda f: (_basic("airflow", f.keys["reader"]), (f.keys["reader"],))),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-post-wrong-secret",
        OAUTH2,
        form_post_auth("airflow", lambda f: f.keys["reader"]),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-post-unknown-client",
        OAUTH2,
        form_post_auth("ghost", lambda f: new_key("ghost")),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-basic-unknown-client",
        OAUTH2,
        form_header_auth(lambda f: (_basic("ghost", f.keys["airflow"]), (f.keys["airflow"],))),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    Case(
        "oauth2-post-empty-client-id",
        OAUTH2,
        form_post_auth("", lambda f: f.keys["airflow"]),
        401,
        "invalid_client",
        challenge="Basic",
    ),
    # Request shape (400).
    Case(
        "oauth2-basic-and-body-secret",
        OAUTH2,
        form(
            lambda f: (
                f"grant_type=client_credentials&client_id=airflow&client_secret={f.keys['airflow']}"
            )
        ),
        400,
        "invalid_request",
    ),
    Case(
        "oauth2-basic-and-other-body-client-id",
        OAUTH2,
        form("grant_type=client_credentials&client_id=reader"),
        400,
        "invalid_request",
    ),
    Case("oauth2-missing-grant-type", OAUTH2, form("scope=read"), 400, "invalid_request"),
    Case("oauth2-empty-body", OAUTH2, form(""), 400, "invalid_request"),
    Case(
        "oauth2-grant-type-password",
        OAUTH2,
        form("grant_type=password&username=a&password=b"),
        400,
        "unsupported_grant_type",
    ),
    Case("oauth2-grant-type-empty", OAUTH2, form("grant_type="), 400, "unsupported_grant_type"),
    Case(
        "oauth2-repeated-parameter",
        OAUTH2,
        form("grant_type=client_credentials&scope=read&scope=write"),
        400,
        "invalid_request",
    ),
    Case(
        "oauth2-repeated-grant-type",
        OAUTH2,
        form("grant_type=client_credentials&grant_type=client_credentials"),
        400,
        "invalid_request",
    ),
    Case("oauth2-not-a-form", OAUTH2, form("grant_type"), 400, "invalid_request"),
    Case(
        "oauth2-json-content-type",
        OAUTH2,
        form('{"grant_type": "client_credentials"}', content_type=JSON),
        400,
        "invalid_request",
    ),
    Case(
        "oauth2-invalid-utf8",
        OAUTH2,
        lambda f: Sent(
            {"Content-Type": FORM, "Authorization": _basic("airflow", f.keys["airflow"])},
            b"grant_type=client_credentials&scope=\xff",
        ),
        400,
        "invalid_request",
    ),
    Case(
        "oauth2-min-ttl-words",
        OAUTH2,
        form("grant_type=client_credentials&min_ttl=soon"),
        400,
        "invalid_request",
    ),
    Case(
        "oauth2-min-ttl-negative",
        OAUTH2,
        form("grant_type=client_credentials&min_ttl=-5"),
        400,
        "invalid_request",
    ),
    Case(
        "oauth2-content-length-over-limit",
        OAUTH2,
        form("grant_type=client_credentials&scope=" + "x" * (MAX_BODY * 2)),
        413,
        "invalid_request",
    ),
    Case("oauth2-chunked-over-limit", OAUTH2, _chunked_form, 413, "invalid_request"),
    # Policy (403).
    Case(
        "oauth2-unknown-resource",
        OAUTH2,
        form("grant_type=client_credentials&resource=urn%3Anowhere"),
        403,
        "unauthorized_client",
    ),
    Case(
        "oauth2-unknown-audience",
        OAUTH2,
        form("grant_type=client_credentials&audience=https%3A%2F%2Felsewhere.example"),
        403,
        "unauthorized_client",
    ),
    Case(
        "oauth2-no-grant",
        OAUTH2,
        form("grant_type=client_credentials&resource=ingestion", caller="idle"),
        403,
        "unauthorized_client",
    ),
    Case(
        "oauth2-invalid-scope-string",
        OAUTH2,
        form("grant_type=client_credentials&scope=read%20%22ev%C3%AEl%22%01"),
        403,
        "invalid_scope",
    ),
    Case(
        "oauth2-scope-escalation",
        OAUTH2,
        form("grant_type=client_credentials&scope=read+write", caller="reader"),
        403,
        "invalid_scope",
    ),
    Case(
        "oauth2-min-ttl-holding-the-key",
        OAUTH2,
        form_post_auth("airflow", lambda f: f.keys["airflow"], extra="&min_ttl=__KEY__"),
        400,
        "invalid_request",
    ),
]

OTHER_CASES = [
    Case("get-unknown-path", "/nope", lambda f: Sent({}), 404, "invalid_request", method="GET"),
    Case("post-unknown-path", "/nope", lambda f: Sent({}), 404, "invalid_request"),
    Case(
        "get-v1-token",
        V1,
        lambda f: Sent({}),
        405,
        "invalid_request",
        method="GET",
        extra_headers={"allow": "POST"},
    ),
    Case(
        "get-oauth2-token",
        OAUTH2,
        lambda f: Sent({}),
        405,
        "invalid_request",
        method="GET",
        extra_headers={"allow": "POST"},
    ),
    Case("put-v1-token", V1, lambda f: Sent({}), 405, "invalid_request", method="PUT"),
]

ALL_CASES = V1_CASES + OAUTH2_CASES + OTHER_CASES


def _resolve(case: Case, files: BrokerFiles) -> Sent:
    sent = case.build(files)
    # ``__KEY__`` in a form body stands for airflow's key, which then must not come back.
    if isinstance(sent.content, bytes) and b"__KEY__" in sent.content:
        key = files.keys["airflow"]
        sent.content = sent.content.replace(b"__KEY__", key.encode())
        sent.secrets = (*sent.secrets, key)
    return sent


def assert_rfc_error(
    response: httpx.Response, status: int, error: str, never: tuple[str, ...]
) -> dict[str, str]:
    """The response is a clean RFC 6749 error that leaks none of ``never``."""
    text = response.text
    assert response.status_code == status, text
    assert "Traceback" not in text
    assert 'File "' not in text
    assert response.headers.get("cache-control") == "no-store"
    assert response.headers.get("content-type", "").startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] in RFC6749_CODES
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str)
    assert body["error_description"].strip()
    header_text = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in never:
        assert secret not in text, f"a submitted secret is echoed: {body}"
        assert secret not in header_text
    return body


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
async def test_malformed_request_gets_a_clean_4xx(
    case: Case, files: BrokerFiles, issuer: OidcProvider
) -> None:
    """Each malformed request gets its 4xx RFC 6749 body, no-store, no secret, no issuer call."""
    sent = _resolve(case, files)
    streamed = sent.content is not None and not isinstance(sent.content, bytes)
    async with running_broker(files.settings()) as client:
        response = await client.request(
            case.method, case.path, headers=sent.headers, content=sent.content
        )
    if streamed:  # the limit must hold without a declared Content-Length
        assert "content-length" not in response.request.headers
        assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_rfc_error(response, case.status, case.error, (*files.secrets, *sent.secrets))
    if case.challenge is not None:
        challenge = response.headers.get("www-authenticate", "")
        assert challenge.split(" ")[0] == case.challenge, challenge
    else:
        assert "www-authenticate" not in response.headers
    for name, value in case.extra_headers.items():
        assert value in response.headers.get(name, ""), response.headers
    assert issuer.proxy.token_requests == 0


def test_every_case_id_is_unique() -> None:
    """The matrix has no duplicated case ids (a duplicate would hide a case)."""
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids))


async def test_rejections_in_a_row_keep_the_broker_serving(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """After every kind of bad input on one app, no 5xx came back and a valid request works."""
    async with running_broker(files.settings()) as client:
        for case in ALL_CASES:
            sent = _resolve(case, files)
            response = await client.request(
                case.method, case.path, headers=sent.headers, content=sent.content
            )
            assert response.status_code < 500, (case.id, response.text)
            assert "Traceback" not in response.text
        response = await client.post(
            V1, headers=bearer(files.keys["airflow"]), json={"profile": "ingestion"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["profile"] == "ingestion"


# -- the OpenMetadata 1.2 custom-oidc client -------------------------------------------------


def _assert_om12_success(response: httpx.Response, files: BrokerFiles) -> None:
    assert response.status_code == 200, response.text
    assert response.headers.get("cache-control") == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    # OpenMetadata 1.2 reads expires_in as a number and refuses tokens living <= 120 s.
    assert type(body["expires_in"]) is int
    assert body["expires_in"] > 120
    assert isinstance(body["access_token"], str)
    assert body["access_token"].count(".") == 2
    for secret in files.secrets:
        assert secret not in response.text


async def test_openmetadata_12_custom_oidc_form_post_gets_a_token(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """OM 1.2 custom-oidc (form body with client_id/client_secret, no Basic) gets a Bearer."""
    key = files.keys["airflow"]
    body = f"grant_type=client_credentials&client_id=airflow&client_secret={key}"
    async with running_broker(files.settings()) as client:
        response = await client.post(OAUTH2, content=body.encode(), headers={"Content-Type": FORM})
    _assert_om12_success(response, files)
    assert issuer.proxy.token_requests == 1


async def test_openmetadata_style_request_via_http_basic_gets_a_token(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """The same client-credentials request authenticated with HTTP Basic gets a Bearer."""
    async with running_broker(files.settings()) as client:
        response = await client.post(
            OAUTH2,
            data=CLIENT_CREDENTIALS,
            auth=("airflow", files.keys["airflow"]),
        )
    _assert_om12_success(response, files)
    assert issuer.proxy.token_requests == 1


async def test_basic_credentials_are_form_urldecoded(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """RFC 6749 2.3.1: a Basic client_id/secret that were form-urlencoded are decoded first."""
    key = files.keys["airflow"]
    encoded = base64.b64encode(f"air%66low:{key}".encode()).decode()
    async with running_broker(files.settings()) as client:
        response = await client.post(
            OAUTH2,
            content=b"grant_type=client_credentials",
            headers={"Content-Type": FORM, "Authorization": f"Basic {encoded}"},
        )
    _assert_om12_success(response, files)


async def test_unknown_key_is_not_confused_with_a_known_one(
    files: BrokerFiles, issuer: OidcProvider
) -> None:
    """A key differing from a valid one only in its last character is refused."""
    key = files.keys["airflow"]
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    async with running_broker(files.settings()) as client:
        response = await client.post(V1, headers=bearer(forged), json={"profile": "ingestion"})
    assert_rfc_error(response, 401, "invalid_client", (key, forged))
    assert issuer.proxy.token_requests == 0
