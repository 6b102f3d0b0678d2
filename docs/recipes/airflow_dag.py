"""OpenMetadata ingestion from Airflow, with tokens from token-broker (docs/recipes/airflow.md).

Two DAGs; copy the one you need:

* ``openmetadata_mysql_exec``: a BashOperator. ``token-broker-runner exec`` fetches a token into
  ``$OM_JWT_TOKEN`` (never argv) and then *becomes* ``metadata ingest``; the workflow YAML
  says ``jwtToken: "${OM_JWT_TOKEN}"``.
* ``openmetadata_mysql_python``: a PythonOperator. The callable asks the broker with
  ``token_broker_runner.client`` (the runner wheel: standard library only, no dependency to
  clash with the worker's pins), puts the token at
  ``workflowConfig.openMetadataServerConfig.securityConfig.jwtToken`` and runs the workflow
  in-process with ``MetadataWorkflow``.

Neither DAG nor workflow file holds a secret. The worker's environment says where the broker
is and who is asking (set it in the worker's deployment, not in the DAG):

    TOKEN_BROKER_URL=http://token-broker.security.svc:8080
    TOKEN_BROKER_CREDENTIAL_FILE=/run/secrets/token-broker/airflow-key

Airflow exports AIRFLOW_CTX_DAG_ID / _TASK_ID / _DAG_RUN_ID / _TRY_NUMBER to both operators;
the client sends them to the broker as audit labels (dag_id, task_id, run_id, try_number).
"""
# An example file, not part of a package. Written for Airflow 2 (what OpenMetadata's ingestion
# images ship); on Airflow 3 import DAG from airflow.sdk and the operators from
# airflow.providers.standard.operators.{bash,python}: nothing else changes.
# ruff: noqa: INP001, AIR311, AIR312

from __future__ import annotations

import copy
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.operators.python import PythonOperator

PROFILE = "ingestion"
# OpenMetadata never refreshes jwtToken during a run, so the token must outlive the run. The
# task's execution_timeout bounds the run: ask the broker for at least that much life.
MIN_TTL = timedelta(hours=3)
WORKFLOW_FILE = "/opt/airflow/workflows/mysql.yaml"

SCHEDULE = "@daily"
DAG_ARGS: dict[str, Any] = {
    # timezone.utc rather than datetime.UTC: workers may run Python older than 3.11.
    "start_date": datetime(2026, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    "catchup": False,
    "max_active_runs": 1,
    "default_args": {"owner": "data-platform", "retries": 1, "retry_delay": timedelta(minutes=5)},
    "tags": ["openmetadata", "token-broker"],
}


# -- 1. BashOperator: token-broker-runner exec --------------------------------------------------

with DAG(
    dag_id="openmetadata_mysql_exec",
    description="MySQL metadata into OpenMetadata; token via `token-broker-runner exec`",
    schedule=SCHEDULE,
    **DAG_ARGS,
) as exec_dag:
    BashOperator(
        task_id="ingest",
        # The token goes into $OM_JWT_TOKEN of `metadata` only; exec replaces itself with
        # `metadata`, so its exit status is the task's and a kill reaches it. No token, no run:
        # the task fails with the broker's reason (exit 1).
        bash_command=(
            "token-broker-runner exec --profile ingestion --min-ttl 3h --env OM_JWT_TOKEN -- "
            "metadata ingest -c /opt/airflow/workflows/mysql.yaml"
        ),
        execution_timeout=MIN_TTL,
    )


# -- 2. PythonOperator: token_broker_runner.client + MetadataWorkflow --------------------------


def with_jwt_token(workflow: dict[str, Any], token: str) -> dict[str, Any]:
    """A copy of ``workflow`` that authenticates to OpenMetadata with the static JWT ``token``."""
    config = copy.deepcopy(workflow)
    server = config.setdefault("workflowConfig", {}).setdefault("openMetadataServerConfig", {})
    server["authProvider"] = "openmetadata"
    server["securityConfig"] = {"jwtToken": token}
    return config


def workflow_config_with_token(workflow: dict[str, Any]) -> dict[str, Any]:
    """``workflow`` with a broker token that lives at least MIN_TTL as its jwtToken."""
    # Imported here so that parsing the DAG file needs nothing beyond Airflow.
    from token_broker_runner.client import (  # noqa: PLC0415
        DEFAULT_URL,
        credential_from_env,
        fetch_token,
        run_labels,
    )

    fetched = fetch_token(
        os.environ.get("TOKEN_BROKER_URL", DEFAULT_URL),
        credential_from_env(),  # TOKEN_BROKER_CREDENTIAL, else TOKEN_BROKER_CREDENTIAL_FILE
        profile=PROFILE,
        min_ttl=int(MIN_TTL.total_seconds()),
        labels=run_labels(),  # dag_id, task_id, run_id, try_number from AIRFLOW_CTX_*
    )
    return with_jwt_token(workflow, fetched.access_token)


def run_metadata_workflow(workflow_file: str) -> None:
    """Load the workflow YAML, add a broker token, run it with OpenMetadata's MetadataWorkflow.

    Never log the returned config: it holds the token.
    """
    import yaml  # noqa: PLC0415
    from metadata.workflow.metadata import MetadataWorkflow  # noqa: PLC0415

    workflow = yaml.safe_load(Path(workflow_file).read_text(encoding="utf-8"))
    ingestion = MetadataWorkflow.create(workflow_config_with_token(workflow))
    ingestion.execute()
    ingestion.raise_from_status()
    ingestion.print_status()
    ingestion.stop()


with DAG(
    dag_id="openmetadata_mysql_python",
    description="MySQL metadata into OpenMetadata; token via token_broker_runner in the task",
    schedule=SCHEDULE,
    **DAG_ARGS,
) as python_dag:
    PythonOperator(
        task_id="ingest",
        python_callable=run_metadata_workflow,
        op_kwargs={"workflow_file": WORKFLOW_FILE},
        execution_timeout=MIN_TTL,
    )
