"""Schema-driven fuzzing of the HTTP API: no input yields a 5xx or a response off the schema.

schemathesis generates requests from the app's own OpenAPI document, positive (fitting the
schema) and negative (breaking it), and sends them in-process (ASGI) to a broker running
against the session's real Redis and oidc-provider. Each response is checked for a server
error, for a status the operation documents, for its content type and for its body schema.

schemathesis' pytest integration (``schemathesis.pytest.from_fixture(...).parametrize()``)
fails under pytest 9.2 (``AttributeError: 'Function' object has no attribute '_nodeid'``),
so each operation's Hypothesis strategy (``APIOperation.as_strategy``) is driven here with
``@given``: bounded, derandomized, no example database, no deadline.
"""

from __future__ import annotations

import base64
import collections
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, CheckFunction, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.app import create_app
from tests.support import OidcProvider
from tests.support.broker import BrokerFiles, bearer, write_config

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 50
"""Per operation and credential kind: a few seconds per test (up to ~15 s on a busy machine)."""

REQUEST_TIMEOUT_SECONDS = 15
"""One request of the in-process app; a hang fails that example instead of the whole run."""

Credential = Literal["valid", "generated"]


@dataclass
class FuzzTarget:
    """The broker app's schema (its lifespan runs in schemathesis' ASGI portal) and its keys."""

    schema: BaseSchema
    files: BrokerFiles
    scopes: list[str]


def _serve(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, **overrides: Any
) -> Iterator[FuzzTarget]:
    files = write_config(tmp_path, issuer)
    app = create_app(files.settings(redis_url, **overrides))
    # Loading the schema through the app starts the app's lifespan in schemathesis' portal
    # thread; every case.call() then reaches that same running app.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        yield FuzzTarget(schema=schema, files=files, scopes=list(issuer.scopes))
    finally:
        shutdown_lifespans()


@pytest.fixture
def target(tmp_path: Path, issuer: OidcProvider, redis_url: str) -> Iterator[FuzzTarget]:
    """The broker with the default config on real Redis and oidc-provider, schema loaded.

    Abuse limits are generous: hundreds of failed authentications from one address must
    reach the authentication and policy code, not stop at the limiter.
    """
    yield from _serve(
        tmp_path, issuer, redis_url, auth_failures_per_minute=100_000, rate_limit_per_minute=0
    )


@pytest.fixture
def throttled(tmp_path: Path, issuer: OidcProvider, redis_url: str) -> Iterator[FuzzTarget]:
    """The same broker with the tightest abuse limits, so most answers are the limiter's."""
    yield from _serve(
        tmp_path, issuer, redis_url, auth_failures_per_minute=1, rate_limit_per_minute=1
    )


Operation = APIOperation[Any, Any, Any, Any]


def _operations(schema: BaseSchema) -> list[Operation]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema itself must be valid
        operations.append(result.ok())
    return operations


def _random_credentials(key: str) -> st.SearchStrategy[str]:
    """Authorization values that are wrong in interesting ways.

    latin-1 without line breaks or leading blanks: what an HTTP client can put on the wire.
    """
    header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
    prefix, _, secret = key.rpartition("_")
    return st.one_of(
        header_text,
        st.builds(lambda s: f"Bearer {s}", header_text),
        # A wrong key sharing the real key's prefix (id and most of the secret).
        st.builds(lambda n: f"Bearer {prefix}_{secret[:-n]}{'A' * n}", st.integers(1, 8)),
        st.builds(lambda raw: "Basic " + base64.b64encode(raw).decode(), st.binary(max_size=60)),
        st.builds(
            lambda name, s: "Basic " + base64.b64encode(f"{name}:{s}".encode()).decode(),
            st.sampled_from(["airflow", "reader", "idle", "nobody", ""]),
            header_text,
        ),
    ).map(str.lstrip)


def _steer(case: Case[Operation], data: st.DataObject, target: FuzzTarget) -> None:
    """Most valid-credential positive cases ask for the real profile, scopes and lifetimes.

    Left alone, generated profile names and min_ttl values almost never name a grant or fit
    the issuer's token life, and issuance would go unfuzzed. Each field still keeps its
    generated value some of the time.
    """
    if not isinstance(case.body, dict) or not data.draw(
        st.sampled_from([True, True, True, False]), label="steer"
    ):
        return
    scopes = st.lists(st.sampled_from([*target.scopes, "admin"]), max_size=3)
    lifetimes: list[int | str] = [0, 60, "30m", "59m", "2h", "5h"]
    min_ttl = st.sampled_from(lifetimes)
    if case.path == "/v1/token":
        case.body["profile"] = "ingestion"
        chosen = data.draw(st.one_of(st.none(), scopes), label="scopes")
        case.body["scopes"] = None if chosen is None else list(chosen)
        if data.draw(st.booleans(), label="steer min_ttl"):
            case.body["min_ttl"] = data.draw(min_ttl, label="min_ttl")
    elif case.path == "/oauth2/token":
        for field in ("client_assertion", "client_assertion_type"):
            case.body.pop(field, None)
        case.body["grant_type"] = "client_credentials"
        case.body["client_id"] = "airflow"
        case.body["client_secret"] = target.files.keys["airflow"]
        case.body["resource"] = data.draw(st.sampled_from(["ingestion", "urn:nothing"]))
        chosen = data.draw(scopes, label="scopes")
        if chosen:
            case.body["scope"] = " ".join(chosen)
        else:
            case.body.pop("scope", None)
        if data.draw(st.booleans(), label="steer min_ttl"):
            case.body["min_ttl"] = str(data.draw(min_ttl, label="min_ttl"))


def _fuzz(target: FuzzTarget, credential: Credential) -> collections.Counter[tuple[str, int]]:
    """Run every operation; return how often each (operation, status) was seen."""
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    for operation in _operations(target.schema):
        _fuzz_operation(target, credential, operation, seen)
    return seen


def _fuzz_operation(
    target: FuzzTarget,
    credential: Credential,
    operation: Operation,
    seen: collections.Counter[tuple[str, int]],
) -> None:
    key = target.files.keys["airflow"]
    fixed = bearer(key) if credential == "valid" and operation.path == "/v1/token" else None
    modes = {
        mode: operation.as_strategy(mode, headers=fixed)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    }

    @given(data=st.data())
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
    )
    def run(data: st.DataObject) -> None:
        mode = data.draw(st.sampled_from(list(modes)), label="mode")
        case = data.draw(modes[mode], label="case")
        extra: dict[str, Any] | None = None
        if credential == "valid" and mode is GenerationMode.POSITIVE:
            _steer(case, data, target)
        elif credential == "generated" and data.draw(st.booleans(), label="override"):
            extra = {"Authorization": data.draw(_random_credentials(key), label="auth")}
        response = case.call(headers=extra, timeout=REQUEST_TIMEOUT_SECONDS)
        seen[operation.label, response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=extra)

    run()


def test_fuzz_with_valid_credentials(target: FuzzTarget) -> None:
    """With a valid key, generated and mutated requests get documented 2xx/4xx, never a 5xx."""
    seen = _fuzz(target, "valid")
    # The steering must have produced real issuance through both endpoints, or this is vacuous.
    assert seen["POST /v1/token", 200] > 0, seen
    assert seen["POST /oauth2/token", 200] > 0, seen
    assert seen["POST /v1/token", 403] > 0, seen


def test_fuzz_with_generated_credentials(target: FuzzTarget) -> None:
    """Random, malformed and near-miss credentials get documented 4xx answers, never a 5xx."""
    seen = _fuzz(target, "generated")
    assert seen["POST /v1/token", 401] > 0, seen
    assert seen["POST /oauth2/token", 401] > 0, seen
    assert not any(status == 200 for (label, status) in seen if label.endswith("/token")), seen


def test_fuzz_under_tight_abuse_limits(throttled: FuzzTarget) -> None:
    """The limiter's answers (429 + Retry-After) are documented and fit the error schema too."""
    # Every answer, the limiter's included, went through CHECKS inside _fuzz.
    for credential in ("valid", "generated"):
        _fuzz(throttled, credential)
