"""``token-broker token`` and ``exec`` as real subprocesses against a real broker subprocess.

One broker (``python -m service serve``, in-process cache) on the session oidc-provider serves
the whole module; every CLI run is bounded in time.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.observe.audit import fingerprint
from tests.support import OidcProvider, free_port, verify_access_token
from tests.support.broker_process import BrokerProcess, broker_env, module_broker, run_cli

TIMEOUT = 30


@pytest.fixture(scope="module")
def broker(
    oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker subprocess for this module, on the session issuer (callers airflow, reader)."""
    with module_broker(oidc_provider, tmp_path_factory.mktemp("runner-broker")) as proc:
        yield proc


@pytest.fixture
def env(broker: BrokerProcess, tmp_path: Path) -> dict[str, str]:
    """A clean environment pointing at the broker with the airflow caller's API key."""
    return broker_env(
        TOKEN_BROKER_URL=broker.url,
        TOKEN_BROKER_CREDENTIAL=broker.files.keys["airflow"],
        HOME=str(tmp_path),
    )


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m service ARGS``, bounded in time."""
    return run_cli(args, env, cwd)


def assert_genuine(token: str, issuer: OidcProvider) -> None:
    """``token`` is a JWT signed by the issuer's current key."""
    header, claims = verify_access_token(token, issuer.jwks())
    assert header["alg"] == "RS256"
    assert claims["exp"] > time.time()


def test_token_output_writes_a_private_file_by_atomic_replace(
    broker: BrokerProcess, env: dict[str, str], tmp_path: Path, oidc_provider: OidcProvider
) -> None:
    """--output replaces FILE (new inode, mode 0600) with the bare token; stdout stays empty."""
    target = tmp_path / "out" / "token"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o644)
    inode = target.stat().st_ino
    result = cli(["token", "--profile", "ingestion", "--output", str(target)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    token = target.read_text()
    assert_genuine(token, oidc_provider)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.stat().st_ino != inode
    assert [p.name for p in target.parent.iterdir()] == ["token"]
    assert token not in result.stderr
    assert broker.files.keys["airflow"] not in result.stderr


def test_token_json_prints_the_broker_answer_with_a_credential_file(
    broker: BrokerProcess, env: dict[str, str], tmp_path: Path, oidc_provider: OidcProvider
) -> None:
    """--json prints the broker's JSON answer; the credential comes from the _FILE variable."""
    import json  # noqa: PLC0415

    key_file = tmp_path / "key"
    key_file.write_text(env.pop("TOKEN_BROKER_CREDENTIAL") + "\n")
    env["TOKEN_BROKER_CREDENTIAL_FILE"] = str(key_file)
    result = cli(["token", "--profile", "ingestion", "--json", "--min-ttl", "30m"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["profile"] == "ingestion"
    assert answer["token_type"].lower() == "bearer"
    assert isinstance(answer["expires_in"], int)
    assert answer["expires_in"] >= 1800
    assert_genuine(answer["access_token"], oidc_provider)
    assert broker.files.keys["airflow"] not in result.stdout + result.stderr


def test_token_sends_airflow_context_and_labels_to_the_audit_line(
    broker: BrokerProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """AIRFLOW_CTX_* become labels (long run_id cut), --label wins; audited with the fingerprint."""
    run_id = f"manual__{uuid.uuid4().hex}" + "x" * 300
    env.update(
        AIRFLOW_CTX_DAG_ID="from-airflow",
        AIRFLOW_CTX_TASK_ID="ingest",
        AIRFLOW_CTX_DAG_RUN_ID=run_id,
        AIRFLOW_CTX_TRY_NUMBER="3",
    )
    args = ["token", "--profile", "ingestion", "--label", "dag_id=om_mysql", "--label", "pod=p-1"]
    result = cli(args, env, tmp_path)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    line = broker.wait_for_audit(lambda r: r.get("labels", {}).get("run_id") == run_id[:256])
    assert line["outcome"] == "issued"
    assert line["fingerprint"] == fingerprint(token)
    assert line["labels"] == {
        "dag_id": "om_mysql",
        "task_id": "ingest",
        "run_id": run_id[:256],
        "try_number": "3",
        "pod": "p-1",
    }


def test_token_refuses_a_malformed_label_before_asking(env: dict[str, str], tmp_path: Path) -> None:
    """A --label that is not key=value with a valid name is a usage error (2), no token."""
    result = cli(["token", "--profile", "ingestion", "--label", "bad name=x"], env, tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--label" in result.stderr


def test_exec_puts_the_token_in_the_environment_only(
    broker: BrokerProcess, env: dict[str, str], tmp_path: Path, oidc_provider: OidcProvider
) -> None:
    """CMD sees OM_JWT_TOKEN (an audited, broker-issued token), no credential, its own args."""
    run_id = f"scheduled__{uuid.uuid4().hex}"
    env.update(AIRFLOW_CTX_DAG_ID="om_mysql", AIRFLOW_CTX_DAG_RUN_ID=run_id)
    script = (
        'printf %s "$OM_JWT_TOKEN" > token.out; '
        'printf %s "${TOKEN_BROKER_CREDENTIAL-unset}" > credential.out; '
        'printf %s "$*" > args.out'
    )
    args = ["exec", "--profile", "ingestion", "--min-ttl", "10m", "--", "sh", "-c", script, "sh"]
    result = cli([*args, "a1", "a2"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    token = (tmp_path / "token.out").read_text()
    assert_genuine(token, oidc_provider)
    assert (tmp_path / "credential.out").read_text() == "unset"
    assert (tmp_path / "args.out").read_text() == "a1 a2"
    assert token not in result.stdout + result.stderr
    line = broker.wait_for_audit(lambda r: r.get("labels", {}).get("run_id") == run_id)
    assert line["fingerprint"] == fingerprint(token)
    assert line["labels"]["dag_id"] == "om_mysql"


def test_exec_exit_status_is_the_commands(env: dict[str, str], tmp_path: Path) -> None:
    """exec's exit status is CMD's own (sh -c 'exit 7' -> 7)."""
    result = cli(["exec", "--profile", "ingestion", "--", "sh", "-c", "exit 7"], env, tmp_path)
    assert result.returncode == 7, result.stderr


def test_exec_becomes_the_command_so_signals_reach_it(env: dict[str, str], tmp_path: Path) -> None:
    """exec replaces itself with CMD: SIGTERM kills CMD (status -15); ps never shows the token."""
    args = ["exec", "--profile", "ingestion", "--env", "RUN_TOKEN", "--", "sleep", "30"]
    process = subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        deadline = time.monotonic() + TIMEOUT
        while cmdline.read_bytes().split(b"\0")[0] != b"sleep":
            assert process.poll() is None, process.communicate(timeout=5)
            assert time.monotonic() < deadline, "exec never became sleep"
            time.sleep(0.05)
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        tokens = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"RUN_TOKEN=")]
        assert len(tokens) == 1
        assert tokens[0].count(".") == 2
        ps = subprocess.run(
            ["ps", "-eo", "args"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        assert "sleep 30" in ps
        assert tokens[0] not in ps
        assert env["TOKEN_BROKER_CREDENTIAL"] not in ps
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    assert process.returncode == -signal.SIGTERM
    assert tokens[0].encode() not in stdout + stderr


def test_exec_without_a_token_does_not_run_the_command(env: dict[str, str], tmp_path: Path) -> None:
    """With the broker unreachable exec exits 1 with a message and never starts CMD."""
    env["TOKEN_BROKER_URL"] = f"http://127.0.0.1:{free_port()}"
    marker = tmp_path / "ran"
    result = cli(["exec", "--profile", "ingestion", "--", "touch", str(marker)], env, tmp_path)
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert not marker.exists()
    assert env["TOKEN_BROKER_CREDENTIAL"] not in result.stderr


def test_exec_refused_by_policy_does_not_run_the_command(
    broker: BrokerProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """A caller without a grant for the profile gets exit 1 and the broker's reason; CMD not run."""
    env["TOKEN_BROKER_CREDENTIAL"] = broker.files.keys["idle"]
    marker = tmp_path / "ran"
    result = cli(["exec", "--profile", "ingestion", "--", "touch", str(marker)], env, tmp_path)
    assert result.returncode == 1
    assert "403" in result.stderr
    assert not marker.exists()


def test_exec_of_a_missing_command_is_127(env: dict[str, str], tmp_path: Path) -> None:
    """A CMD that does not exist exits 127 like a shell, naming the command."""
    result = cli(["exec", "--profile", "ingestion", "--", "no-such-command-xyz"], env, tmp_path)
    assert result.returncode == 127
    assert "no-such-command-xyz" in result.stderr
