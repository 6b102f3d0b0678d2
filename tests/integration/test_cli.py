"""The ``token-broker`` command line, run as a real subprocess (``python -m service``)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.store.crypto import new_cache_key
from tests.support import free_port
from tests.support.broker_process import run_cli

CLIENT_SECRET = "cli-client-s3cret-never-printed"
INLINE_SECRET = "cli-inline-Sup3rS3cret-8d1e"
REDIS_PASSWORD = "redis-pa55word-never-printed"
BAD_CACHE_KEY = "dG9vLXNob3J0LWNhY2hlLWtleQ"
CREDENTIAL = "tbk_0badf00d_runner-NotARealKeyButShapedLikeOne"
KEY_SHAPE = re.compile(r"tbk_[0-9a-f]{8}_[A-Za-z0-9_-]{16,}")
TIMEOUT = 60


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The current environment minus every TOKEN_BROKER_* variable and proxy setting."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TOKEN_BROKER_") and name.lower() not in {"http_proxy", "all_proxy"}
    }
    clean["NO_PROXY"] = clean["no_proxy"] = "127.0.0.1,localhost"
    clean["HOME"] = str(tmp_path)
    return clean


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m service ARGS`` with ``env``, in ``cwd``, bounded in time."""
    return run_cli(args, env, cwd)


def good_config(directory: Path) -> Path:
    """A valid broker YAML whose client secret is a file next to it."""
    (directory / "client.secret").write_text(CLIENT_SECRET + "\n")
    document: dict[str, Any] = {
        "profiles": {
            "ingestion": {
                "issuer": "https://idp.example.com",
                "client_id": "0oa123",
                "client_secret": {"file": "client.secret"},
                "scopes": ["ingestion"],
            }
        },
        "callers": {
            "airflow": {
                "api_key_sha256": hashlib.sha256(b"k").hexdigest(),
                "grants": [{"profile": "ingestion", "max_ttl": "4h"}],
            }
        },
    }
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def bad_config(directory: Path) -> Path:
    """A broker YAML with several problems, one of them an inline secret."""
    document: dict[str, Any] = {
        "profiles": {
            "ingestion": {
                "issuer": "http://idp.example.com",
                "client_id": "0oa123",
                "client_secret": INLINE_SECRET,
                "scopes": ["ingestion"],
            },
            "other": {
                "issuer": "https://idp.example.com",
                "client_id": "x",
                "client_secret": {"file": "nowhere.secret"},
            },
            "typo": {"issuer": "https://idp.example.com", "client_id": "x", "colour": "blue"},
        },
        "callers": {
            "airflow": {"grants": [{"profile": "missing"}]},
        },
        "unexpected": 1,
    }
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def assert_no_secret(result: subprocess.CompletedProcess[str], *values: str) -> None:
    """None of ``values`` appears on stdout or stderr."""
    for value in values:
        assert value not in result.stdout
        assert value not in result.stderr


def test_check_config_lists_every_problem_masked_and_exits_1(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """check-config on a bad config prints each problem to stderr, no secret, and exits 1."""
    config = bad_config(tmp_path)
    env["TOKEN_BROKER_REDIS_URL"] = f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0"
    env["TOKEN_BROKER_CACHE_KEYS"] = BAD_CACHE_KEY
    result = run(["check-config", "--config", str(config)], env, tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    err = result.stderr
    for fragment in (
        "unexpected: unknown key",
        "profiles.typo.colour",
        "profiles.ingestion.issuer",
        "profiles.ingestion.client_secret: inline secrets are refused",
        "profiles.other.client_secret",
        "nowhere.secret",
        "callers.airflow: needs a credential",
        "callers.airflow.grants[0].profile: unknown profile 'missing'",
        "TOKEN_BROKER_CACHE_KEYS",
    ):
        assert fragment in err, (fragment, err)
    match = re.search(r"configuration has (\d+) problem", err)
    assert match is not None, err
    listed = [line for line in err.splitlines() if line.startswith("  - ")]
    assert int(match.group(1)) == len(listed) >= 8
    assert "Traceback" not in err
    assert_no_secret(result, INLINE_SECRET, REDIS_PASSWORD, BAD_CACHE_KEY)


def test_check_config_reads_config_path_from_the_environment(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """Without --config, check-config validates $TOKEN_BROKER_CONFIG."""
    env["TOKEN_BROKER_CONFIG"] = str(bad_config(tmp_path))
    result = run(["check-config"], env, tmp_path)
    assert result.returncode == 1
    assert "inline secrets are refused" in result.stderr
    assert_no_secret(result, INLINE_SECRET)


def test_check_config_on_a_good_config_prints_ok_and_exits_0(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """check-config on a valid config prints an ok summary and exits 0."""
    config = good_config(tmp_path)
    env["TOKEN_BROKER_REDIS_URL"] = f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0"
    env["TOKEN_BROKER_CACHE_KEYS"] = new_cache_key()
    result = run(["check-config", "--config", str(config)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
    assert "1 profile(s), 1 caller(s)" in result.stdout
    assert_no_secret(result, CLIENT_SECRET, REDIS_PASSWORD, env["TOKEN_BROKER_CACHE_KEYS"])


def test_check_config_on_a_missing_file_exits_1(tmp_path: Path, env: dict[str, str]) -> None:
    """check-config on a path that does not exist reports it and exits 1."""
    result = run(["check-config", "--config", str(tmp_path / "absent.yaml")], env, tmp_path)
    assert result.returncode == 1
    assert "absent.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def _new_key(env: dict[str, str], cwd: Path) -> tuple[str, str]:
    result = run(["new-key", "--caller", "x"], env, cwd)
    assert result.returncode == 0, result.stderr
    keys = KEY_SHAPE.findall(result.stdout)
    assert len(keys) == 1, result.stdout
    digest = re.search(r"api_key_sha256: ([0-9a-f]{64})", result.stdout)
    assert digest is not None, result.stdout
    assert re.search(r"^  x:$", result.stdout, re.MULTILINE), result.stdout
    return keys[0], digest.group(1)


def test_new_key_prints_a_key_and_its_config_line(tmp_path: Path, env: dict[str, str]) -> None:
    """new-key prints tbk_<id>_<secret> once and the sha256 config line that admits it."""
    key, digest = _new_key(env, tmp_path)
    assert KEY_SHAPE.fullmatch(key)
    assert hashlib.sha256(key.encode()).hexdigest() == digest


def test_new_key_gives_a_different_key_each_run(tmp_path: Path, env: dict[str, str]) -> None:
    """Two new-key runs print two different keys (and hashes)."""
    first, first_digest = _new_key(env, tmp_path)
    second, second_digest = _new_key(env, tmp_path)
    assert first != second
    assert first_digest != second_digest


def test_serve_refuses_a_bad_config(tmp_path: Path, env: dict[str, str]) -> None:
    """serve on a bad config lists the problems, masks secrets and exits non-zero."""
    env["TOKEN_BROKER_HOST"] = "127.0.0.1"
    env["TOKEN_BROKER_PORT"] = str(free_port())
    result = run(["serve", "--config", str(bad_config(tmp_path))], env, tmp_path)
    assert result.returncode != 0
    assert "problem(s)" in result.stderr
    assert "inline secrets are refused" in result.stderr
    assert "unknown profile 'missing'" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_secret(result, INLINE_SECRET)


def test_token_against_an_unreachable_broker_exits_1(tmp_path: Path, env: dict[str, str]) -> None:
    """token with nothing listening prints a clear message on stderr and nothing on stdout."""
    url = f"http://127.0.0.1:{free_port()}"
    env["TOKEN_BROKER_CREDENTIAL"] = CREDENTIAL
    result = run(["token", "--profile", "ingestion", "--url", url], env, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "unreachable" in result.stderr
    assert url in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_secret(result, CREDENTIAL)


def test_token_reads_the_broker_url_from_the_environment(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """token uses $TOKEN_BROKER_URL when --url is not given."""
    url = f"http://127.0.0.1:{free_port()}"
    env["TOKEN_BROKER_URL"] = url
    env["TOKEN_BROKER_CREDENTIAL"] = CREDENTIAL
    result = run(["token", "--profile", "ingestion"], env, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert url in result.stderr


def test_token_without_a_credential_names_the_variable(tmp_path: Path, env: dict[str, str]) -> None:
    """token with no credential in the environment exits 1 naming TOKEN_BROKER_CREDENTIAL."""
    url = f"http://127.0.0.1:{free_port()}"
    result = run(["token", "--profile", "ingestion", "--url", url], env, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "TOKEN_BROKER_CREDENTIAL" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_with_an_unreadable_credential_file_exits_1(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """token with TOKEN_BROKER_CREDENTIAL_FILE pointing nowhere exits 1 naming the variable."""
    env["TOKEN_BROKER_CREDENTIAL_FILE"] = str(tmp_path / "absent")
    url = f"http://127.0.0.1:{free_port()}"
    result = run(["token", "--profile", "ingestion", "--url", url], env, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "TOKEN_BROKER_CREDENTIAL_FILE" in result.stderr


def test_token_with_a_bad_min_ttl_exits_2(tmp_path: Path, env: dict[str, str]) -> None:
    """token --min-ttl that is not a duration is a usage error (exit 2), nothing on stdout."""
    env["TOKEN_BROKER_CREDENTIAL"] = CREDENTIAL
    url = f"http://127.0.0.1:{free_port()}"
    result = run(["token", "--profile", "p", "--min-ttl", "soon", "--url", url], env, tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--min-ttl" in result.stderr


def test_console_script_is_installed_next_to_the_interpreter() -> None:
    """The token-broker console script exists in the environment running the tests."""
    script = Path(sys.executable).with_name("token-broker")
    assert script.exists()
    assert os.access(script, os.X_OK)
