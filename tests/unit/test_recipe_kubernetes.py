"""docs/recipes/kubernetes*: the pod specs and broker config fit together, and the doc shows them.

The manifests cannot be applied here (no cluster), so the facts that make the recipe work
are checked on the parsed YAML: the projected token's audience and path, the init
container's arguments, the shared token volume, the workflow's ``jwtToken``, the user, and
that the broker config binds the pod's service account to a grant that allows the asked
``--min-ttl``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config.load import parse_config
from service.config.validated import BrokerConfig
from service.durations import parse_duration
from service.runner.client import DEFAULT_CREDENTIAL_PATH

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"
KUBERNETES = RECIPES / "kubernetes"
INIT_POD = KUBERNETES / "ingestion-pod.yaml"
SIDECAR_POD = KUBERNETES / "ingestion-pod-sidecar.yaml"
BROKER_CONFIG = KUBERNETES / "broker.yaml"
TOKEN_FILE = "/var/run/om/token"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    """One recipe file: its Pod, its ConfigMap, and the pod's token-broker container."""

    path: Path
    pod: Doc
    config_map: Doc

    @property
    def spec(self) -> Doc:
        """The pod's spec."""
        spec: Doc = self.pod["spec"]
        return spec

    @property
    def broker_container(self) -> Doc:
        """The one init container that runs ``token-broker sidecar``."""
        found: list[Doc] = [c for c in self.spec["initContainers"] if c["args"][0] == "sidecar"]
        assert len(found) == 1
        return found[0]

    @property
    def ingestion_container(self) -> Doc:
        """The one (main) container: the OpenMetadata ingestion."""
        found: list[Doc] = self.spec["containers"]
        assert len(found) == 1
        return found[0]

    def volume(self, name: str) -> Doc:
        """The pod volume ``name``."""
        found: list[Doc] = [v for v in self.spec["volumes"] if v["name"] == name]
        assert len(found) == 1, name
        return found[0]

    def all_containers(self) -> list[Doc]:
        """Init containers and containers."""
        return [*self.spec.get("initContainers", []), *self.spec["containers"]]


def load_manifest(path: Path) -> Manifest:
    """Parse a recipe file (a ConfigMap and a Pod)."""
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}
    assert set(documents) == {"ConfigMap", "Pod"}
    return Manifest(path, documents["Pod"], documents["ConfigMap"])


def option(args: list[str], name: str) -> str:
    """The value following ``name`` in ``args`` (which must hold it exactly once)."""
    assert args.count(name) == 1, name
    return args[args.index(name) + 1]


def mounts(container: Doc) -> dict[str, Doc]:
    """A container's volume mounts by volume name."""
    return {mount["name"]: mount for mount in container.get("volumeMounts", [])}


def load_broker_config(tmp_path: Path) -> tuple[Doc, BrokerConfig]:
    """broker.yaml raw and validated; its file paths (secret, CA) pointed at stand-ins."""
    raw: Doc = yaml.safe_load(BROKER_CONFIG.read_text())
    stand_in = tmp_path / "stand-in"
    stand_in.write_text("not-a-real-secret\n")
    for profile in raw["profiles"].values():
        assert set(profile["client_secret"]) == {"file"}
        profile["client_secret"] = {"file": str(stand_in)}
    for issuer in raw["trusted_issuers"].values():
        if "ca_file" in issuer:
            issuer["ca_file"] = str(stand_in)
    return raw, parse_config(raw, base_dir=tmp_path)


@pytest.fixture(params=[INIT_POD, SIDECAR_POD], ids=lambda p: p.name)
def manifest(request: pytest.FixtureRequest) -> Manifest:
    """Each pod recipe, parsed."""
    path: Path = request.param
    return load_manifest(path)


def test_projected_token_has_the_broker_audience_at_the_default_credential_path(
    manifest: Manifest, tmp_path: Path
) -> None:
    """The SA token is projected for broker.yaml's audience to the CLI's default path, init only."""
    raw, _ = load_broker_config(tmp_path)
    (cluster,) = [i for i in raw["trusted_issuers"].values() if i["kind"] == "kubernetes"]
    (source,) = manifest.volume("broker-credential")["projected"]["sources"]
    projected = source["serviceAccountToken"]
    assert projected["audience"] == cluster["audience"] == "token-broker"
    assert 600 <= projected["expirationSeconds"] <= 3600
    mount = mounts(manifest.broker_container)["broker-credential"]
    assert mount["readOnly"] is True
    assert Path(mount["mountPath"]) / projected["path"] == DEFAULT_CREDENTIAL_PATH
    # No other credential: neither an API key nor the API-server token.
    assert manifest.spec["automountServiceAccountToken"] is False
    for container in manifest.all_containers():
        names = {env["name"] for env in container.get("env", [])}
        assert not {n for n in names if n.startswith("TOKEN_BROKER_CREDENTIAL")}
    assert "broker-credential" not in mounts(manifest.ingestion_container)


def test_the_token_file_is_written_to_a_shared_emptydir_that_the_workflow_reads(
    manifest: Manifest,
) -> None:
    """--write FILE lies on an in-memory emptyDir mounted (read-only) by ingestion at jwtToken."""
    args = manifest.broker_container["args"]
    assert option(args, "--write") == TOKEN_FILE
    token_dir = str(Path(TOKEN_FILE).parent)
    assert manifest.volume("om-token")["emptyDir"]["medium"] == "Memory"
    writer = mounts(manifest.broker_container)["om-token"]
    reader = mounts(manifest.ingestion_container)["om-token"]
    assert writer["mountPath"] == reader["mountPath"] == token_dir
    assert not writer.get("readOnly", False)
    assert reader["readOnly"] is True
    workflows = manifest.config_map["data"]
    assert workflows
    for text in workflows.values():
        server = yaml.safe_load(text)["workflowConfig"]["openMetadataServerConfig"]
        assert server["authProvider"] == "openmetadata"
        assert server["securityConfig"] == {"jwtToken": TOKEN_FILE}
    config_mount = mounts(manifest.ingestion_container)["workflow"]
    config_map = manifest.config_map["metadata"]["name"]
    assert manifest.volume("workflow")["configMap"]["name"] == config_map
    command = " ".join(manifest.ingestion_container["command"])
    assert "metadata ingest -c " in command
    assert f"{config_mount['mountPath']}/" in command


def test_init_container_fetches_once_before_ingestion_starts() -> None:
    """ingestion-pod.yaml: a plain init container running sidecar --once (exit = done)."""
    manifest = load_manifest(INIT_POD)
    container = manifest.broker_container
    assert "--once" in container["args"]
    assert "restartPolicy" not in container
    assert manifest.spec["restartPolicy"] == "Never"
    assert manifest.ingestion_container["command"][:2] == ["metadata", "ingest"]


def test_sidecar_variant_keeps_refreshing_and_gates_ingestion_on_the_file() -> None:
    """ingestion-pod-sidecar.yaml: a native sidecar (no --once) whose startup probe needs FILE."""
    manifest = load_manifest(SIDECAR_POD)
    container = manifest.broker_container
    assert "--once" not in container["args"]
    assert container["restartPolicy"] == "Always"
    assert TOKEN_FILE in " ".join(container["startupProbe"]["exec"]["command"])


def test_every_container_runs_as_one_non_root_user(manifest: Manifest) -> None:
    """runAsNonRoot pod-wide with one runAsUser, not overridden (the token file is 0600)."""
    context = manifest.spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] > 0
    for container in manifest.all_containers():
        own = container.get("securityContext", {})
        assert "runAsUser" not in own
        assert own.get("runAsNonRoot", True) is True
        assert own["allowPrivilegeEscalation"] is False
        assert own["capabilities"]["drop"] == ["ALL"]


def test_broker_config_grants_the_pod_its_profile_and_min_ttl(
    manifest: Manifest, tmp_path: Path
) -> None:
    """broker.yaml is valid and binds the pod's service account to --profile, max_ttl >= min."""
    _, config = load_broker_config(tmp_path)
    namespace = manifest.pod["metadata"]["namespace"]
    account = manifest.spec["serviceAccountName"]
    (binding,) = config.workloads
    assert binding.subject == f"system:serviceaccount:{namespace}:{account}"
    args = manifest.broker_container["args"]
    profile = option(args, "--profile")
    assert profile in config.profiles
    (grant,) = [g for g in config.callers[binding.caller].grants if g.profile == profile]
    assert grant.max_ttl is not None
    assert parse_duration(option(args, "--min-ttl")) <= parse_duration(grant.max_ttl)
    assert manifest.config_map["metadata"]["namespace"] == namespace


def test_kubernetes_doc_shows_the_recipe_files_verbatim() -> None:
    """kubernetes.md embeds ingestion-pod.yaml and broker.yaml whole; every YAML block is theirs."""
    doc = (RECIPES / "kubernetes.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", doc, re.MULTILINE | re.DOTALL)
    files = [INIT_POD.read_text(), SIDECAR_POD.read_text(), BROKER_CONFIG.read_text()]
    assert INIT_POD.read_text() in blocks
    assert BROKER_CONFIG.read_text() in blocks
    for block in blocks:
        assert any(block in text for text in files), block[:200]
    for name in ("ingestion-pod.yaml", "ingestion-pod-sidecar.yaml", "broker.yaml"):
        assert f"](kubernetes/{name})" in doc
