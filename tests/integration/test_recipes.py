"""The OpenMetadata recipes in docs/recipes, run for real against a broker subprocess.

One broker (``python -m service serve`` with a real Redis) on a dedicated oidc-provider that
issues 5 h tokens, so that the Airflow recipe's ``--min-ttl 3h`` can be satisfied.

* Airflow (docs/recipes/airflow_dag.py): Airflow is not installed, so a stand-in ``airflow``
  package records what the DAG file declares; the recorded ``bash_command`` is then run by
  bash as Airflow's BashOperator would, with a stand-in ``metadata`` CLI on PATH, and the
  PythonOperator's functions are called for real.
* OpenMetadata 1.2 ``custom-oidc`` (docs/recipes/legacy-custom-oidc.md): its exact token
  request, against the broker's ``/oauth2/token`` and against a sidecar's loopback one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

import httpx
import pytest
import yaml

import service.runner.client
from service.durations import parse_duration
from service.observe.audit import fingerprint
from service.store.crypto import new_cache_key
from tests.support import (
    OidcProvider,
    RedisServer,
    ensure_node_modules,
    free_port,
    start_oidc_provider,
    verify_access_token,
)
from tests.support.broker import BrokerFiles, write_config
from tests.support.broker_process import (
    BrokerProcess,
    broker_env,
    start_broker,
    wait_ready,
)

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"
TIMEOUT = 30
TOKEN_LIFE = 5 * 3600
JWT_SHAPED = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
# What the recipes' policies grant (docs/recipes/airflow.md, legacy-custom-oidc.md).
CALLERS: dict[str, dict[str, Any]] = {
    "airflow": {"grants": [{"profile": "ingestion", "max_ttl": "4h"}]},
    "openmetadata-legacy": {"grants": [{"profile": "ingestion"}]},
    "ingestion-pod": {"grants": [{"profile": "ingestion"}]},
}


class RedisBroker(BrokerProcess):
    """A broker subprocess with Redis as its shared cache (``start_broker(redis_url=...)``)."""

    def __init__(self, files: BrokerFiles, log: Path, redis_url: str) -> None:
        super().__init__(files, log)
        self.redis_url = redis_url
        self.cache_key = new_cache_key()

    def start(self) -> None:
        """Start it with Redis on :attr:`port` and wait until /readyz says so."""
        self.process, _ = start_broker(
            self.files,
            self.log,
            redis_url=self.redis_url,
            cache_key=self.cache_key,
            port=self.port,
        )
        try:
            wait_ready(self.url, self.process, self.log)
        except BaseException:
            self.stop()
            raise


@pytest.fixture(scope="module")
def long_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """An oidc-provider issuing TOKEN_LIFE (5 h) tokens, long enough for --min-ttl 3h."""
    ensure_node_modules()
    provider = start_oidc_provider(
        tmp_path_factory.mktemp("recipes-issuer"), access_token_ttl=TOKEN_LIFE
    )
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def broker(
    long_issuer: OidcProvider,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisBroker]:
    """A broker subprocess with Redis, the recipes' callers, on the 5 h issuer."""
    redis_server.resume()
    if not redis_server.is_running():
        redis_server.start()
    directory = tmp_path_factory.mktemp("recipes-broker")
    files = write_config(directory, long_issuer, callers=CALLERS)
    with RedisBroker(files, directory / "broker.log", redis_server.url) as process:
        checks = httpx.get(process.url + "/readyz", trust_env=False, timeout=5).json()["checks"]
        assert checks["cache"] == "ok"  # Redis, not the in-process cache
        yield process


def issued_line(broker: BrokerProcess, token: str, **fields: Any) -> dict[str, Any]:
    """The broker's ``issued`` audit line for ``token`` with ``fields``; fails if none.

    Callers share the cached token of a profile, so the fingerprint alone is not enough.
    """
    mark = fingerprint(token)
    return broker.wait_for_audit(
        lambda r: (
            r.get("outcome") == "issued"
            and r.get("fingerprint") == mark
            and all(r.get(name) == value for name, value in fields.items())
        )
    )


# -- Airflow: a stand-in airflow package -------------------------------------------------------


class StandInDag:
    """Records ``DAG(...)`` and, as a context manager, the operators created inside it."""

    stack: ClassVar[list[StandInDag]] = []

    def __init__(self, *, dag_id: str, **kwargs: Any) -> None:
        self.dag_id = dag_id
        self.kwargs = kwargs
        self.tasks: dict[str, StandInOperator] = {}

    def __enter__(self) -> Self:
        StandInDag.stack.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        StandInDag.stack.pop()


class StandInOperator:
    """Records an operator's keyword arguments in the enclosing DAG, like Airflow's."""

    def __init__(self, *, task_id: str, **kwargs: Any) -> None:
        assert StandInDag.stack, f"task {task_id} created outside a DAG"
        dag = StandInDag.stack[-1]
        assert task_id not in dag.tasks, f"duplicate task_id {task_id}"
        self.task_id = task_id
        self.kwargs = kwargs
        dag.tasks[task_id] = self


class StandInBashOperator(StandInOperator):
    """``airflow.operators.bash.BashOperator``: bash_command is required."""

    def __init__(self, *, task_id: str, bash_command: str, **kwargs: Any) -> None:
        super().__init__(task_id=task_id, bash_command=bash_command, **kwargs)


class StandInPythonOperator(StandInOperator):
    """``airflow.operators.python.PythonOperator``: python_callable is required."""

    def __init__(self, *, task_id: str, python_callable: Callable[..., Any], **kwargs: Any) -> None:
        assert callable(python_callable)
        super().__init__(task_id=task_id, python_callable=python_callable, **kwargs)


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


@pytest.fixture
def recipe(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """docs/recipes/airflow_dag.py imported with the stand-in airflow in sys.modules."""
    modules = {
        "airflow": _module("airflow", DAG=StandInDag),
        "airflow.operators": _module("airflow.operators"),
        "airflow.operators.bash": _module(
            "airflow.operators.bash", BashOperator=StandInBashOperator
        ),
        "airflow.operators.python": _module(
            "airflow.operators.python", PythonOperator=StandInPythonOperator
        ),
    }
    # The worker has the runner wheel, whose package is service/runner under another name.
    modules["token_broker_runner"] = service.runner
    modules["token_broker_runner.client"] = service.runner.client
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("airflow_dag_recipe", RECIPES / "airflow_dag.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_airflow_dag_file_declares_an_exec_dag_and_a_python_dag(recipe: types.ModuleType) -> None:
    """The DAG file parses without OpenMetadata; its tasks never outlive the token they ask for."""
    exec_dag, python_dag = recipe.exec_dag, recipe.python_dag
    assert isinstance(exec_dag, StandInDag)
    assert isinstance(python_dag, StandInDag)
    assert (exec_dag.dag_id, python_dag.dag_id) == (
        "openmetadata_mysql_exec",
        "openmetadata_mysql_python",
    )
    for dag in (exec_dag, python_dag):
        assert dag.kwargs["catchup"] is False
        assert dag.kwargs["schedule"]
        assert list(dag.tasks) == ["ingest"]

    bash = exec_dag.tasks["ingest"]
    assert isinstance(bash, StandInBashOperator)
    command = bash.kwargs["bash_command"]
    assert command == (
        "token-broker-runner exec --profile ingestion --min-ttl 3h --env OM_JWT_TOKEN -- "
        "metadata ingest -c /opt/airflow/workflows/mysql.yaml"
    )
    argv = shlex.split(command)
    min_ttl = timedelta(seconds=parse_duration(argv[argv.index("--min-ttl") + 1]))
    # OpenMetadata never refreshes the token: the run must end before the token does.
    assert bash.kwargs["execution_timeout"] <= min_ttl
    # The worker's environment is inherited: no credential in the DAG.
    assert "env" not in bash.kwargs

    python = python_dag.tasks["ingest"]
    assert isinstance(python, StandInPythonOperator)
    assert python.kwargs["python_callable"] is recipe.run_metadata_workflow
    assert python.kwargs["op_kwargs"] == {"workflow_file": "/opt/airflow/workflows/mysql.yaml"}
    assert python.kwargs["execution_timeout"] <= recipe.MIN_TTL
    assert min_ttl == recipe.MIN_TTL
    assert "metadata" not in sys.modules  # imported by the callable only, at run time


FAKE_METADATA = """#!{python}
# Stands in for OpenMetadata's `metadata` CLI: records how it was started, never the token.
import hashlib, json, os, sys
token = os.environ.get("OM_JWT_TOKEN")
record = {{
    "argv": sys.argv[1:],
    "has_token": bool(token),
    "fingerprint": hashlib.sha256(token.encode()).hexdigest()[:16] if token else None,
    "jwt_segments": len(token.split(".")) if token else 0,
    "token_in_argv": bool(token) and any(token in arg for arg in sys.argv),
    "credential_in_env": "TOKEN_BROKER_CREDENTIAL" in os.environ,
    "airflow_dag_id": os.environ.get("AIRFLOW_CTX_DAG_ID"),
}}
with open({out!r}, "w", encoding="utf-8") as sink:
    json.dump(record, sink)
"""


def test_airflow_bash_command_runs_metadata_with_a_broker_token(
    recipe: types.ModuleType, broker: RedisBroker, tmp_path: Path
) -> None:
    """bash -c <bash_command>: `metadata` gets $OM_JWT_TOKEN (issued, audited with run labels)."""
    command = recipe.exec_dag.tasks["ingest"].kwargs["bash_command"]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    seen_file = tmp_path / "metadata-saw.json"
    fake = fake_bin / "metadata"
    fake.write_text(FAKE_METADATA.format(python=sys.executable, out=str(seen_file)))
    fake.chmod(0o755)
    venv_bin = Path(sys.executable).parent
    path = f"{fake_bin}{os.pathsep}{venv_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"
    assert shutil.which("token-broker-runner", path=path) == str(venv_bin / "token-broker-runner")
    key_file = tmp_path / "airflow-key"
    key_file.write_text(broker.files.keys["airflow"] + "\n")
    run_id = f"scheduled__{uuid.uuid4().hex}"
    # What a worker has, plus what BashOperator adds: the AIRFLOW_CTX_* variables.
    env = broker_env(
        PATH=path,
        HOME=str(tmp_path),
        TOKEN_BROKER_URL=broker.url,
        TOKEN_BROKER_CREDENTIAL_FILE=str(key_file),
        AIRFLOW_CTX_DAG_ID="openmetadata_mysql_exec",
        AIRFLOW_CTX_TASK_ID="ingest",
        AIRFLOW_CTX_DAG_RUN_ID=run_id,
        AIRFLOW_CTX_TRY_NUMBER="1",
    )
    # Airflow's BashOperator runs exactly this: bash -c <bash_command> in a temporary cwd.
    result = subprocess.run(
        ["bash", "-c", command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(seen_file.read_text())
    assert seen["argv"] == ["ingest", "-c", "/opt/airflow/workflows/mysql.yaml"]
    assert seen["has_token"] is True
    assert seen["jwt_segments"] == 3
    assert seen["token_in_argv"] is False
    assert seen["credential_in_env"] is False
    assert seen["airflow_dag_id"] == "openmetadata_mysql_exec"
    line = broker.wait_for_audit(lambda r: r.get("labels", {}).get("run_id") == run_id)
    assert line["outcome"] == "issued"
    assert line["caller"] == "airflow"
    assert line["profile"] == "ingestion"
    assert line["fingerprint"] == seen["fingerprint"]
    assert line["expires_in"] >= 3 * 3600
    assert line["labels"] == {
        "dag_id": "openmetadata_mysql_exec",
        "task_id": "ingest",
        "run_id": run_id,
        "try_number": "1",
    }
    assert not JWT_SHAPED.search(result.stdout + result.stderr)


@pytest.fixture
def worker_env(broker: RedisBroker, monkeypatch: pytest.MonkeyPatch) -> str:
    """os.environ of an Airflow worker running the PythonOperator; returns the run_id."""
    run_id = f"manual__{uuid.uuid4().hex}"
    for name in list(os.environ):
        if name.startswith(("TOKEN_BROKER_", "AIRFLOW_CTX_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("TOKEN_BROKER_URL", broker.url)
    monkeypatch.setenv("TOKEN_BROKER_CREDENTIAL", broker.files.keys["airflow"])
    # PythonOperator exports these into os.environ before calling the callable.
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "openmetadata_mysql_python")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "ingest")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", run_id)
    return run_id


WORKFLOW: dict[str, Any] = {
    "source": {"type": "mysql", "serviceName": "mysql_prod"},
    "sink": {"type": "metadata-rest", "config": {}},
    "workflowConfig": {
        "openMetadataServerConfig": {
            "hostPort": "http://openmetadata:8585/api",
            "authProvider": "openmetadata",
            "securityConfig": {"jwtToken": "${OM_JWT_TOKEN}"},
        }
    },
}


def jwt_of(config: Mapping[str, Any]) -> str:
    """workflowConfig.openMetadataServerConfig.securityConfig.jwtToken of a workflow config."""
    server = config["workflowConfig"]["openMetadataServerConfig"]
    assert server["authProvider"] == "openmetadata"
    token = server["securityConfig"]["jwtToken"]
    assert isinstance(token, str)
    return token


def test_airflow_python_config_gets_a_broker_token_with_run_labels(
    recipe: types.ModuleType, worker_env: str, broker: RedisBroker, long_issuer: OidcProvider
) -> None:
    """workflow_config_with_token puts an issued 3h+ token at ...jwtToken; AIRFLOW_CTX_* audited."""
    original = json.loads(json.dumps(WORKFLOW))
    config = recipe.workflow_config_with_token(original)
    assert original == WORKFLOW  # a copy, the input is untouched
    token = jwt_of(config)
    _, claims = verify_access_token(token, long_issuer.jwks())
    assert claims["exp"] > time.time() + 3 * 3600
    assert {k: v for k, v in config.items() if k != "workflowConfig"} == {
        k: v for k, v in WORKFLOW.items() if k != "workflowConfig"
    }
    labels = {"dag_id": "openmetadata_mysql_python", "task_id": "ingest", "run_id": worker_env}
    issued_line(broker, token, caller="airflow", profile="ingestion", labels=labels)


def test_airflow_python_callable_runs_metadata_workflow_with_the_token(
    recipe: types.ModuleType,
    worker_env: str,
    broker: RedisBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run_metadata_workflow: MetadataWorkflow.create(config with the token), execute ... stop."""
    calls: list[str] = []
    created: list[dict[str, Any]] = []

    class MetadataWorkflow:
        """Records what OpenMetadata's MetadataWorkflow would be asked to do."""

        @classmethod
        def create(cls, config: dict[str, Any]) -> MetadataWorkflow:
            calls.append("create")
            created.append(config)
            return cls()

        def __getattr__(self, name: str) -> Callable[[], None]:
            return lambda: calls.append(name)

    monkeypatch.setitem(sys.modules, "metadata", _module("metadata"))
    monkeypatch.setitem(sys.modules, "metadata.workflow", _module("metadata.workflow"))
    monkeypatch.setitem(
        sys.modules,
        "metadata.workflow.metadata",
        _module("metadata.workflow.metadata", MetadataWorkflow=MetadataWorkflow),
    )
    workflow_file = tmp_path / "mysql.yaml"
    workflow_file.write_text(yaml.safe_dump(WORKFLOW))

    recipe.run_metadata_workflow(str(workflow_file))

    assert calls == ["create", "execute", "raise_from_status", "print_status", "stop"]
    (config,) = created
    token = jwt_of(config)
    assert token != "${OM_JWT_TOKEN}"
    labels = {"dag_id": "openmetadata_mysql_python", "task_id": "ingest", "run_id": worker_env}
    issued_line(broker, token, caller="airflow", labels=labels)


# -- OpenMetadata 1.2 custom-oidc ----------------------------------------------------------------

OM12_EXPIRY_MARGIN = 120


def om12_custom_oidc(security_config: Mapping[str, str]) -> tuple[httpx.Response, str, Any]:
    """OpenMetadata 1.2's custom-oidc token request, byte for byte what its client sends.

    Reproduces CustomOIDCAuthenticationProvider.auth_token() of open-metadata/OpenMetadata,
    ingestion/src/metadata/ingestion/ometa/auth_provider.py, as released in
    openmetadata-ingestion 1.2.5.3 (the same request at commit
    6cacf3de6aefcdb83f6aeba2bb6a55820ac4804d, before secretKey became a SecretStr)::

        data = {"grant_type": "client_credentials",
                "client_id": self.security_config.clientId,
                "client_secret": self.security_config.secretKey.get_secret_value()}
        response = requests.post(url=self.security_config.tokenEndpoint, data=data,
                                 timeout=60 * 5)
        if response.ok:
            token = response_json.get("access_token")   # AuthenticationException if missing
            self.expiry = response_json.get("expires_in")
        else: raise APIError(...)

    requests sends ``data`` urlencoded, as application/x-www-form-urlencoded, with the headers
    below and no Authorization header (captured from requests 2.34). requests is not
    installed here, so httpx sends the same body and headers. (The real 1.2.5.3 client was
    also run once, by hand, against both endpoints; see docs/recipes/legacy-custom-oidc.md.)
    Returns the response, the access token and the raw ``expires_in``.
    """
    data = {
        "grant_type": "client_credentials",
        "client_id": security_config["clientId"],
        "client_secret": security_config["secretKey"],
    }
    body = urllib.parse.urlencode(data).encode()
    headers = {
        "User-Agent": "python-requests/2.34.2",
        "Accept-Encoding": "gzip, deflate",
        "Accept": "*/*",
        "Connection": "keep-alive",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    response = httpx.post(
        security_config["tokenEndpoint"],
        content=body,
        headers=headers,
        trust_env=False,
        timeout=TIMEOUT,
    )
    assert response.is_success, response.text
    answer = response.json()
    token = answer.get("access_token")
    assert token, "OM 1.2 raises AuthenticationException: no access_token"
    return response, token, answer.get("expires_in")


def om12_renews_at(expiry: Any, now: float) -> float:
    """When OM 1.2's REST client asks for a new token (metadata/ingestion/ometa/client.py).

    ``utcnow().timestamp() + expiry - 120``: a string raises TypeError, and 120 s or less
    means every API call fetches a token again.
    """
    if isinstance(expiry, datetime):
        return expiry.timestamp() - OM12_EXPIRY_MARGIN
    renew_at: float = now + expiry - OM12_EXPIRY_MARGIN
    return renew_at


def assert_om12_accepts(response: httpx.Response, token: str, expiry: Any) -> None:
    """What OM 1.2 needs from the answer: a Bearer JWT and a numeric expires_in > 120."""
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["token_type"] == "Bearer"
    assert token.count(".") == 2
    assert type(expiry) is int
    now = time.time()
    assert om12_renews_at(expiry, now) > now


def test_custom_oidc_client_gets_a_token_from_the_broker_facade(
    broker: RedisBroker, long_issuer: OidcProvider
) -> None:
    """clientId=caller, secretKey=its API key, tokenEndpoint=broker /oauth2/token: OM 1.2 works."""
    security_config = {
        "clientId": "openmetadata-legacy",
        "secretKey": broker.files.keys["openmetadata-legacy"],
        "tokenEndpoint": f"{broker.url}/oauth2/token",
    }
    response, token, expiry = om12_custom_oidc(security_config)
    assert_om12_accepts(response, token, expiry)
    verify_access_token(token, long_issuer.jwks())
    issued_line(
        broker, token, caller="openmetadata-legacy", credential="api_key", profile="ingestion"
    )


def test_custom_oidc_client_with_a_wrong_secret_is_refused(broker: RedisBroker) -> None:
    """A secretKey that is not the caller's API key: 401 invalid_client (OM 1.2 raises APIError)."""
    response = httpx.post(
        f"{broker.url}/oauth2/token",
        content=urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": "openmetadata-legacy",
                "client_secret": broker.files.keys["airflow"],
            }
        ).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        trust_env=False,
        timeout=TIMEOUT,
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert broker.files.keys["airflow"] not in response.text


def test_custom_oidc_client_gets_the_sidecar_token_from_its_loopback_port(
    broker: RedisBroker, tmp_path: Path, long_issuer: OidcProvider
) -> None:
    """tokenEndpoint=sidecar's 127.0.0.1 /oauth2/token: no real secret, expires_in >= --min-ttl."""
    port = free_port()
    env = broker_env(
        TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL=broker.files.keys["ingestion-pod"]
    )
    args = ["--profile", "ingestion", "--listen", f"127.0.0.1:{port}", "--min-ttl", "5m"]
    log = tmp_path / "sidecar.log"
    with log.open("ab") as sink:
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "service", "sidecar", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert sidecar.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the sidecar never held a token"
            try:
                if httpx.get(base + "/healthz", trust_env=False, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        # The sidecar ignores the client credentials (the pod is the trust boundary), but
        # OM 1.2 requires a secretKey: any placeholder will do.
        security_config = {
            "clientId": "openmetadata-ingestion",
            "secretKey": "unused-the-sidecar-ignores-it",
            "tokenEndpoint": f"{base}/oauth2/token",
        }
        response, token, expiry = om12_custom_oidc(security_config)
    finally:
        if sidecar.poll() is None:
            sidecar.send_signal(signal.SIGTERM)
            try:
                sidecar.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(sidecar.pid, signal.SIGKILL)
                sidecar.wait(timeout=5)
    assert sidecar.returncode == 0
    assert_om12_accepts(response, token, expiry)
    assert expiry >= 300  # --min-ttl 5m: never less is handed out
    verify_access_token(token, long_issuer.jwks())
    issued_line(broker, token, caller="ingestion-pod")
    assert token not in log.read_text()
