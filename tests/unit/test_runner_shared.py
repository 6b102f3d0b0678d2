"""The runner stays portable (Python 3.9 syntax) and the server uses its shared rules, once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from service.config import schema
from service.errors import BrokerError, InvalidRequest, RateLimited
from service.observe import audit
from service.runner import oauth2
from service.runner.oauth2 import OAuth2Error, parse_form, retry_after_seconds
from service.upstream import resilience

RUNNER = Path(__file__).resolve().parents[2] / "service" / "runner"
MODULES = sorted(RUNNER.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_runner_modules_parse_as_python_3_9(path: Path) -> None:
    """No match statement, parenthesised context managers or other post-3.9 syntax."""
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_runner_annotations_are_never_evaluated(path: Path) -> None:
    """A module with annotations defers them, so ``X | None`` in one is fine on 3.9."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotated = any(
        isinstance(node, ast.AnnAssign | ast.arg) and node.annotation is not None
        for node in ast.walk(tree)
    ) or any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None
        for node in ast.walk(tree)
    )
    futures = {
        alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "__future__"
        for alias in node.names
    }
    assert not annotated or "annotations" in futures


def test_the_server_uses_the_runners_rules_not_copies() -> None:
    """Name rule, fingerprint, backoff and Retry-After exist once, in runner/oauth2.py."""
    assert schema.NAME_PATTERN is oauth2.NAME_PATTERN
    assert audit.fingerprint is oauth2.fingerprint
    assert resilience.Backoff is oauth2.Backoff
    assert resilience.retry_after_seconds is oauth2.retry_after_seconds


def test_broker_errors_are_oauth2_errors_rendered_the_same_way() -> None:
    """The server's tree hangs under OAuth2Error: one body and headers for server and sidecar."""
    assert issubclass(BrokerError, OAuth2Error)
    limited = RateLimited("slow down", retry_after=2.5)
    assert limited.body() == {
        "error": "temporarily_unavailable",
        "error_description": "slow down",
    }
    assert limited.headers() == {"Retry-After": "3"}
    assert (limited.status, OAuth2Error("x", status=404, error="invalid_request").status) == (
        429,
        404,
    )


@pytest.mark.parametrize("body", [b"a=1&a=2", b"secret-name=x&secret-name=y"])
def test_a_repeated_form_parameter_is_refused_without_naming_it(body: bytes) -> None:
    """RFC 6749 section 3.2; the caller's parameter name never comes back in the message."""
    with pytest.raises(InvalidRequest) as caught:
        parse_form(body, InvalidRequest)
    assert caught.value.description == "a form parameter is repeated (RFC 6749 section 3.2)"
    assert "secret" not in caught.value.description


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    """Delta-seconds, an HTTP date (with ``now``), and ``None`` for anything else."""
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Thu, 01 Jan 1970 00:01:40 GMT", now=90.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("1.5") is None
    assert retry_after_seconds(None) is None
