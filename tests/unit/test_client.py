"""The runner-side client: credential resolution, run labels, atomic private files, answers."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from service.api.schemas import TokenBody
from service.config.schema import NAME_PATTERN
from service.runner import client
from service.runner.client import (
    DEFAULT_CREDENTIAL_PATH,
    ClientError,
    FetchedToken,
    credential_from_env,
    parse_label,
    parse_response,
    run_labels,
    write_private_file,
)

CREDENTIAL = "tbk_0badf00d_runner-NotARealKeyButShapedLikeOne"


def test_env_credential_wins_over_file_and_default_path(tmp_path: Path) -> None:
    """TOKEN_BROKER_CREDENTIAL is used even when a file and the default path exist."""
    (tmp_path / "file").write_text("from-file")
    (tmp_path / "default").write_text("from-default")
    environ = {
        "TOKEN_BROKER_CREDENTIAL": f" {CREDENTIAL}\n",
        "TOKEN_BROKER_CREDENTIAL_FILE": str(tmp_path / "file"),
    }
    assert credential_from_env(environ, tmp_path / "default") == CREDENTIAL


def test_credential_file_is_read_and_stripped(tmp_path: Path) -> None:
    """TOKEN_BROKER_CREDENTIAL_FILE is read and its surrounding whitespace removed."""
    (tmp_path / "file").write_text("from-file\n")
    environ = {"TOKEN_BROKER_CREDENTIAL_FILE": str(tmp_path / "file")}
    assert credential_from_env(environ, tmp_path / "default") == "from-file"


def test_credential_file_is_reread_on_every_call(tmp_path: Path) -> None:
    """A rotated credential file (projected token) is picked up by the next call."""
    path = tmp_path / "token"
    path.write_text("first")
    environ = {"TOKEN_BROKER_CREDENTIAL_FILE": str(path)}
    assert credential_from_env(environ, tmp_path / "absent") == "first"
    path.write_text("second")
    assert credential_from_env(environ, tmp_path / "absent") == "second"


def test_default_projected_token_path_is_used_when_it_exists(tmp_path: Path) -> None:
    """With no variable set, the default projected-token path is read when it exists."""
    default = tmp_path / "token"
    default.write_text("projected-jwt\n")
    assert credential_from_env({}, default) == "projected-jwt"


def test_missing_everything_names_both_variables_and_the_default_path(tmp_path: Path) -> None:
    """With no variable and no default file the error names what to set."""
    with pytest.raises(ClientError) as caught:
        credential_from_env({}, tmp_path / "absent")
    message = str(caught.value)
    assert "TOKEN_BROKER_CREDENTIAL" in message
    assert "TOKEN_BROKER_CREDENTIAL_FILE" in message
    assert str(tmp_path / "absent") in message


def test_a_named_but_missing_file_does_not_fall_back_to_the_default(tmp_path: Path) -> None:
    """An unreadable TOKEN_BROKER_CREDENTIAL_FILE is an error, not a silent fallback."""
    default = tmp_path / "token"
    default.write_text("projected-jwt")
    environ = {"TOKEN_BROKER_CREDENTIAL_FILE": str(tmp_path / "absent")}
    with pytest.raises(ClientError, match="TOKEN_BROKER_CREDENTIAL_FILE"):
        credential_from_env(environ, default)


def test_an_empty_credential_file_is_an_error(tmp_path: Path) -> None:
    """An empty credential file is refused with a message naming the variable."""
    (tmp_path / "file").write_text("\n")
    environ = {"TOKEN_BROKER_CREDENTIAL_FILE": str(tmp_path / "file")}
    with pytest.raises(ClientError, match="TOKEN_BROKER_CREDENTIAL_FILE is empty"):
        credential_from_env(environ, tmp_path / "absent")


def test_default_path_is_the_broker_audience_token_not_the_api_server_token() -> None:
    """The default credential path is the broker's projected token, never the SA API token."""
    assert Path("/var/run/secrets/token-broker/token") == DEFAULT_CREDENTIAL_PATH
    assert "kubernetes.io" not in str(DEFAULT_CREDENTIAL_PATH)


def test_label_rules_match_the_broker_schema() -> None:
    """The client's label name pattern is the broker's NAME_PATTERN."""
    assert client.LABEL_NAME_PATTERN == NAME_PATTERN


def test_airflow_context_becomes_labels() -> None:
    """AIRFLOW_CTX_* variables map to dag_id, task_id, run_id and try_number."""
    environ = {
        "AIRFLOW_CTX_DAG_ID": "om_ingest",
        "AIRFLOW_CTX_TASK_ID": "ingest_mysql",
        "AIRFLOW_CTX_DAG_RUN_ID": "scheduled__2026-01-01T00:00:00+00:00",
        "AIRFLOW_CTX_TRY_NUMBER": "2",
        "AIRFLOW_CTX_EXECUTION_DATE": "ignored",
    }
    assert run_labels({}, environ) == {
        "dag_id": "om_ingest",
        "task_id": "ingest_mysql",
        "run_id": "scheduled__2026-01-01T00:00:00+00:00",
        "try_number": "2",
    }


def test_explicit_labels_win_over_airflow_context() -> None:
    """An explicit --label overrides the value taken from AIRFLOW_CTX_*."""
    environ = {"AIRFLOW_CTX_DAG_ID": "from-airflow", "AIRFLOW_CTX_TASK_ID": "t"}
    labels = run_labels({"dag_id": "explicit", "pod": "p-1"}, environ)
    assert labels == {"task_id": "t", "dag_id": "explicit", "pod": "p-1"}


def test_long_and_empty_airflow_values_never_break_a_request() -> None:
    """A run_id over 256 characters is truncated and an empty value skipped; the broker accepts."""
    environ = {"AIRFLOW_CTX_DAG_RUN_ID": "r" * 1000, "AIRFLOW_CTX_DAG_ID": "  "}
    labels = run_labels({}, environ)
    assert labels == {"run_id": "r" * 256}
    body = TokenBody.model_validate({"profile": "ingestion", "labels": labels})
    assert body.labels["run_id"] == "r" * 256


def test_at_most_sixteen_labels_keeping_explicit_ones() -> None:
    """Over the broker's 16-label limit, explicit labels are kept and the body validates."""
    explicit = {f"k{i}": "v" for i in range(16)}
    environ = {"AIRFLOW_CTX_DAG_ID": "d", "AIRFLOW_CTX_TASK_ID": "t"}
    labels = run_labels(explicit, environ)
    assert labels == explicit
    TokenBody.model_validate({"profile": "ingestion", "labels": labels})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("dag_id=a", ("dag_id", "a")), ("k=", ("k", "")), ("k=a=b", ("k", "a=b"))],
)
def test_parse_label_accepts_key_value(text: str, expected: tuple[str, str]) -> None:
    """--label key=value splits on the first '='."""
    assert parse_label(text) == expected


@pytest.mark.parametrize("text", ["novalue", "-bad=x", "sp ace=x", f"k={'v' * 257}", "=x"])
def test_parse_label_refuses_bad_labels_without_echoing_the_value(text: str) -> None:
    """Malformed or oversized labels raise ValueError that never contains the value."""
    with pytest.raises(ValueError, match="label") as caught:
        parse_label(text)
    _, _, value = text.partition("=")
    if len(value) > 3:
        assert value not in str(caught.value)


def test_private_file_is_0600_with_exact_content(tmp_path: Path) -> None:
    """write_private_file writes the text verbatim with mode 0600, even under umask 000."""
    path = tmp_path / "token"
    old = os.umask(0)
    try:
        write_private_file(path, "abc.def.ghi")
    finally:
        os.umask(old)
    assert path.read_text() == "abc.def.ghi"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_private_file_replaces_atomically_and_narrows_mode(tmp_path: Path) -> None:
    """An existing 0644 file is replaced by a new inode (rename) with mode 0600."""
    path = tmp_path / "token"
    path.write_text("old")
    path.chmod(0o644)
    before = path.stat().st_ino
    write_private_file(path, "new")
    assert path.read_text() == "new"
    assert path.stat().st_ino != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_private_temp_file_is_never_wider_than_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file is 0600 from the moment it exists, in the target's directory."""
    seen: list[tuple[int, Path]] = []
    real = tempfile.mkstemp

    def spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        seen.append((stat.S_IMODE(os.fstat(fd).st_mode), Path(name).parent))
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    old = os.umask(0)
    try:
        write_private_file(tmp_path / "token", "t")
    finally:
        os.umask(old)
    assert seen == [(0o600, tmp_path)]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the write fails before the rename, the old file is intact and no temp file remains."""
    path = tmp_path / "token"
    path.write_text("old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_private_file(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_parse_response_returns_the_token() -> None:
    """A 200 answer becomes a FetchedToken whose repr does not show the token."""
    fetched = parse_response(
        200,
        {"token-broker-source": "cache"},
        b'{"access_token":"secret-token","token_type":"Bearer","expires_in":3599,"scope":"a b"}',
    )
    assert isinstance(fetched, FetchedToken)
    assert (fetched.access_token, fetched.expires_in, fetched.scope) == (
        "secret-token",
        3599,
        "a b",
    )
    assert fetched.source == "cache"
    assert "secret-token" not in repr(fetched)


@pytest.mark.parametrize(
    ("status", "headers", "body", "retryable", "retry_after"),
    [
        (400, {}, b'{"error":"invalid_request","error_description":"min_ttl"}', False, None),
        (401, {}, b'{"error":"invalid_client","error_description":"no"}', False, None),
        (503, {"retry-after": "7"}, b'{"error":"temporarily_unavailable"}', True, 7.0),
        (502, {}, b"<html>bad gateway</html>", True, None),
        (200, {}, b'{"token_type":"Bearer"}', False, None),
    ],
)
def test_parse_response_errors_say_whether_to_retry(
    status: int, headers: dict[str, str], body: bytes, retryable: bool, retry_after: float | None
) -> None:
    """Refusals and malformed answers raise ClientError with status, retryability, Retry-After."""
    with pytest.raises(ClientError) as caught:
        parse_response(status, headers, body)
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert caught.value.retry_after == retry_after


def test_unreachable_is_retryable() -> None:
    """A ClientError without an HTTP status (broker never reached) is retryable."""
    assert ClientError("broker unreachable").retryable
