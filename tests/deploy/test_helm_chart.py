"""helm/token-broker: renders, lints and validates offline; what it renders is hardened and fits.

There is no cluster and no helm binary here: the chart is rendered by Helm v4 as a library
(helm-python-sdk), every object is validated against the Kubernetes 1.30 OpenAPI schemas in
strict mode (kubernetes-validate: unknown fields are errors), and the facts that make the
deployment work are checked on the parsed objects. ``lookup`` returns nothing offline, so the
generated cache key is new on every render here (in a cluster it is reused).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from service.config import load as broker_config
from service.config.load import parse_config
from service.config.settings import Settings
from service.durations import parse_duration
from service.observe import metrics
from service.runner.client import DEFAULT_CREDENTIAL_PATH
from service.store.crypto import parse_cache_keys

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "token-broker"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
PRODUCTION = CHART / "examples" / "values-production.yaml"
EXAMPLE_CRONJOB = CHART / "examples" / "ingestion-cronjob.yaml"
DASHBOARD = CHART / "dashboards" / "token-broker.json"
VALUES_FILES = [*CI_VALUES, PRODUCTION]
KUBE_VERSION = "1.30"
RELEASE = NAMESPACE = "token-broker"
UID = 10001
# Custom resources have no schema in kubernetes-validate; each is checked by its own test.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Doc = dict[str, Any]


def load_yaml(path: Path) -> Doc:
    """A values file as a dict (an empty file is ``{}``)."""
    loaded: Doc | None = yaml.safe_load(path.read_text())
    return loaded or {}


@dataclass(frozen=True)
class Rendered:
    """One render of the chart: its objects and its NOTES.txt."""

    documents: list[Doc]
    notes: str

    def all(self, kind: str) -> list[Doc]:
        """Every object of ``kind``."""
        return [doc for doc in self.documents if doc["kind"] == kind]

    def one(self, kind: str) -> Doc:
        """The single object of ``kind``."""
        found = self.all(kind)
        assert len(found) == 1, f"{len(found)} {kind} objects"
        return found[0]

    def kinds(self) -> set[str]:
        """The kinds rendered."""
        return {doc["kind"] for doc in self.documents}

    @property
    def pod(self) -> Doc:
        """The Deployment's pod spec."""
        spec: Doc = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Doc:
        """The broker container."""
        (container,) = self.pod["containers"]
        assert isinstance(container, dict)
        return container

    @property
    def annotations(self) -> dict[str, str]:
        """The pod template's annotations."""
        found: dict[str, str] = self.one("Deployment")["spec"]["template"]["metadata"][
            "annotations"
        ]
        return found

    def env(self) -> dict[str, str]:
        """The container's plain environment variables."""
        return {e["name"]: e["value"] for e in self.container["env"] if "value" in e}

    def volume(self, name: str) -> Doc:
        """The pod volume ``name``."""
        (found,) = [v for v in self.pod["volumes"] if v["name"] == name]
        assert isinstance(found, dict)
        return found

    def mount(self, name: str) -> Doc:
        """The container's mount of volume ``name``."""
        (found,) = [m for m in self.container["volumeMounts"] if m["name"] == name]
        assert isinstance(found, dict)
        return found

    def config_map(self) -> Doc:
        """The ConfigMap holding the broker YAML."""
        (found,) = [c for c in self.all("ConfigMap") if "config.yaml" in c["data"]]
        assert isinstance(found, dict)
        return found

    def broker_config(self) -> Doc:
        """The broker YAML in the ConfigMap."""
        loaded: Doc = yaml.safe_load(self.config_map()["data"]["config.yaml"])
        return loaded


def render(chart: helm.Chart, values: Doc) -> Rendered:
    """Render the chart as release ``token-broker`` in namespace ``token-broker``."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    documents: list[Doc] = []
    notes = ""
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        documents += [doc for doc in yaml.safe_load_all(text) if doc]
    return Rendered(documents, notes)


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    """The chart, loaded once."""
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def renders(chart: helm.Chart) -> dict[str, Rendered]:
    """Every values file (ci/*.yaml and the production example) rendered, by file name."""
    return {path.name: render(chart, load_yaml(path)) for path in VALUES_FILES}


@pytest.fixture(params=[path.name for path in VALUES_FILES])
def rendered(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    """Each render in turn."""
    return renders[request.param]


def validate(doc: Doc) -> None:
    """Strict validation of one object against the Kubernetes schemas."""
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_ci_values_cover_the_promised_variants() -> None:
    """ci/ holds the defaults, the all-features file and the single-replica file."""
    assert {p.name for p in CI_VALUES} >= {
        "default-values.yaml",
        "existing-secret-sentinel-values.yaml",
        "single-replica-values.yaml",
    }


def test_every_object_validates_strictly_against_kubernetes(rendered: Rendered) -> None:
    """Every rendered object passes kubernetes-validate --strict for 1.30, CRDs excepted."""
    assert rendered.kinds() >= {"Deployment", "Service", "ServiceAccount", "ConfigMap"}
    for doc in rendered.documents:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        validate(doc)
        assert doc["metadata"]["namespace"] == NAMESPACE or doc["kind"] == "ConfigMap"


def test_strict_validation_refuses_unknown_fields(renders: dict[str, Rendered]) -> None:
    """The validator is really strict: a misspelt field in the Deployment is an error."""
    deployment = json.loads(json.dumps(renders["default-values.yaml"].one("Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        validate(deployment)


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name)
def test_helm_lint_strict_passes(values_file: Path) -> None:
    """helm lint --strict for Kubernetes 1.30 reports no error and no warning."""
    report = helm.lint(CHART, load_yaml(values_file), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # 2 warning, 3 error


def test_pod_and_container_are_hardened(rendered: Rendered) -> None:
    """Non-root UID 10001, RuntimeDefault seccomp, read-only root, no escalation, caps dropped."""
    pod_context = rendered.pod["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod_context["runAsUser"] == UID
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    context = rendered.container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == UID
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "emptyDir" in rendered.volume("tmp")
    assert rendered.mount("tmp")["mountPath"] == "/tmp"
    assert rendered.container["resources"]["requests"]
    assert rendered.container["resources"]["limits"]["memory"]


def test_api_token_is_not_mounted_but_the_cluster_ca_is(renders: dict[str, Rendered]) -> None:
    """By default no API-server token; kube-root-ca.crt sits where ca_file expects the CA."""
    default = renders["default-values.yaml"]
    assert default.pod["automountServiceAccountToken"] is False
    assert default.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert default.volume("cluster-ca")["configMap"]["name"] == "kube-root-ca.crt"
    ca_dir = default.mount("cluster-ca")["mountPath"]
    production_ca = renders[PRODUCTION.name].broker_config()["trusted_issuers"]["cluster"]
    assert production_ca["ca_file"] == f"{ca_dir}/ca.crt"
    # With the API token mounted, the kubelet provides the CA there; no second mount.
    single = renders["single-replica-values.yaml"]
    assert single.pod["automountServiceAccountToken"] is True
    assert "cluster-ca" not in {v["name"] for v in single.pod["volumes"]}


def test_probes_port_and_service(rendered: Rendered) -> None:
    """Liveness /healthz, readiness /readyz on port http (8080); Service port 8080 named http."""
    container = rendered.container
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    env = rendered.env()
    assert env["TOKEN_BROKER_HOST"] == "0.0.0.0"
    assert env["TOKEN_BROKER_PORT"] == "8080"
    assert container["args"] == ["serve"]
    # Service links would inject TOKEN_BROKER_PORT=tcp://... for a Service named token-broker.
    assert rendered.pod["enableServiceLinks"] is False
    (service_port,) = rendered.one("Service")["spec"]["ports"]
    assert service_port == {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    selector = rendered.one("Service")["spec"]["selector"]
    labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_replicas_autoscale_spread_over_nodes_and_survive_drains(
    renders: dict[str, Rendered],
) -> None:
    """Default: HPA (min 2) owns replicas, anti-affinity by hostname, PDB minAvailable 1."""
    default = renders["default-values.yaml"]
    deployment = default.one("Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it; upgrades must not reset it
    hpa = default.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    selector = deployment["spec"]["selector"]["matchLabels"]
    (term,) = default.pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    pdb = default.one("PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}


def test_single_replica_has_no_hpa_and_no_pdb(renders: dict[str, Rendered]) -> None:
    """autoscaling off, replicaCount 1: replicas 1, and no PDB that would block every drain."""
    single = renders["single-replica-values.yaml"]
    assert single.one("Deployment")["spec"]["replicas"] == 1
    assert not single.kinds() & {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert "startupProbe" not in single.container  # startupProbe: null removes it


def test_config_map_is_the_values_config_and_a_change_rolls_the_pods(chart: helm.Chart) -> None:
    """config.yaml is .Values.config; checksum/config moves only when the config does."""
    values = load_yaml(CHART / "ci" / "existing-secret-sentinel-values.yaml")
    first = render(chart, values)
    assert first.broker_config() == values["config"]
    config_map = first.config_map()
    assert first.volume("config")["configMap"]["name"] == config_map["metadata"]["name"]
    assert first.env()["TOKEN_BROKER_CONFIG"] == f"{first.mount('config')['mountPath']}/config.yaml"

    again = render(chart, values)
    assert again.annotations["checksum/config"] == first.annotations["checksum/config"]
    assert again.annotations["checksum/secret"] == first.annotations["checksum/secret"]

    changed = json.loads(json.dumps(values))
    changed["config"]["callers"]["airflow"]["grants"][0]["max_ttl"] = "2h"
    moved = render(chart, changed)
    assert moved.annotations["checksum/config"] != first.annotations["checksum/config"]
    assert moved.annotations["checksum/secret"] == first.annotations["checksum/secret"]

    other_secret = json.loads(json.dumps(values))
    other_secret["secrets"]["existingSecret"] = "token-broker-secrets-v2"
    rotated = render(chart, other_secret)
    assert rotated.annotations["checksum/secret"] != first.annotations["checksum/secret"]
    assert rotated.annotations["checksum/config"] == first.annotations["checksum/config"]


def test_generated_cache_key_secret_is_a_valid_key_mounted_as_a_file(
    renders: dict[str, Rendered],
) -> None:
    """Without existingSecret: one random 32-byte URL-safe key, read via CACHE_KEYS_FILE."""
    default = renders["default-values.yaml"]
    secret = default.one("Secret")
    assert secret["metadata"]["name"] == f"{RELEASE}-cache-keys"
    text = base64.b64decode(secret["data"]["cache-keys"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", text)  # URL-safe, unpadded, as new-cache-key
    (key,) = parse_cache_keys(text)
    assert len(key) == 32
    volume = default.volume("cache-keys")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = default.mount("cache-keys")
    assert mount["readOnly"] is True
    assert default.env()["TOKEN_BROKER_CACHE_KEYS_FILE"] == f"{mount['mountPath']}/cache-keys"
    assert "TOKEN_BROKER_CACHE_KEYS" not in default.env()
    other = renders["single-replica-values.yaml"].one("Secret")
    assert other["data"]["cache-keys"] != secret["data"]["cache-keys"]  # random per render


def test_generated_cache_key_is_reused_from_the_cluster_on_upgrade() -> None:
    """The template looks the Secret up and keeps its value; it generates only when absent."""
    template = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert '$value := dig "data" "cache-keys" "" $existing' in template
    assert "{{- if not $value }}" in template


def test_existing_secret_is_mounted_and_wired_through_file_variables(
    renders: dict[str, Rendered],
) -> None:
    """existingSecret: no Secret rendered; Redis URL and cache keys come from its files."""
    for name in ("existing-secret-sentinel-values.yaml", PRODUCTION.name):
        rendered = renders[name]
        assert "Secret" not in rendered.kinds()
        volume = rendered.volume("secrets")["secret"]
        assert volume["secretName"] == "token-broker-secrets"
        assert volume["defaultMode"] == 0o440
        mount = rendered.mount("secrets")
        assert mount["readOnly"] is True
        env = rendered.env()
        assert env["TOKEN_BROKER_REDIS_URL_FILE"] == f"{mount['mountPath']}/redis-url"
        assert env["TOKEN_BROKER_CACHE_KEYS_FILE"] == f"{mount['mountPath']}/cache-keys"
        assert "TOKEN_BROKER_REDIS_URL" not in env
        assert "cache-keys" not in {v["name"] for v in rendered.pod["volumes"]}
        # Every client secret in the broker YAML is a file of that Secret.
        for profile in rendered.broker_config()["profiles"].values():
            assert Path(profile["client_secret"]["file"]).parent == Path(mount["mountPath"])
    assert renders["existing-secret-sentinel-values.yaml"].env()["TOKEN_BROKER_REDIS_CA_FILE"]


def test_plain_redis_url_is_set_directly(renders: dict[str, Rendered]) -> None:
    """redis.url (no credentials) becomes TOKEN_BROKER_REDIS_URL, with its CA file."""
    env = renders["single-replica-values.yaml"].env()
    assert env["TOKEN_BROKER_REDIS_URL"] == "rediss://redis.redis.svc:6380/0"
    assert env["TOKEN_BROKER_REDIS_CA_FILE"] == "/etc/redis-ca/ca.crt"
    assert env["TOKEN_BROKER_RATE_LIMIT_PER_MINUTE"] == "1200"
    assert "TOKEN_BROKER_REDIS_URL" not in renders["default-values.yaml"].env()


def test_trusted_proxies_become_the_env_variable_only_when_set(
    chart: helm.Chart, renders: dict[str, Rendered]
) -> None:
    """trustedProxies becomes TOKEN_BROKER_TRUSTED_PROXIES as the broker parses it; [] sets none."""
    for rendered in renders.values():
        assert "TOKEN_BROKER_TRUSTED_PROXIES" not in rendered.env()
    values = {"trustedProxies": ["10.42.0.0/16", "192.168.7.1", "fd00::/8"]}
    env = render(chart, values).env()
    assert env["TOKEN_BROKER_TRUSTED_PROXIES"] == "10.42.0.0/16,192.168.7.1,fd00::/8"
    variable = {"trusted_proxies": env["TOKEN_BROKER_TRUSTED_PROXIES"]}
    parsed = Settings.model_validate(variable).trusted_proxies
    assert [str(network) for network in parsed] == ["10.42.0.0/16", "192.168.7.1/32", "fd00::/8"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "/redis/url"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
        ({"replicas": 3}, "additional properties 'replicas'"),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
        ({"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
        ({"networkPolicy": {"ingress": {"from": []}}}, "/networkPolicy/ingress/from"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"trustedProxies": "10.0.0.0/8"}, "/trustedProxies"),
        ({"trustedProxies": ["10.0.0.0/8 # ingress"]}, "/trustedProxies/0"),
    ],
    ids=[
        "replicaCount-string",
        "redis-password-in-values",
        "redis-bad-scheme",
        "unknown-key",
        "writable-root",
        "root-user",
        "network-policy-open-to-all",
        "bad-digest",
        "trusted-proxies-not-a-list",
        "trusted-proxies-not-a-cidr",
    ],
)
def test_values_schema_refuses_bad_values(chart: helm.Chart, values: Doc, message: str) -> None:
    """values.schema.json refuses wrong types, unknown keys and weakened hardening."""
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_values_schema_config_keys_follow_the_broker_yaml() -> None:
    """The schema's `config` allows exactly the broker YAML's top-level sections."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == broker_config._TOP_LEVEL


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "redis": {"url": "redis://redis:6379/0"},
                "secrets": {"existingSecret": "s", "keys": {"redisUrl": "redis-url"}},
            },
            "not both",
        ),
        ({"secrets": {"keys": {"cacheKeys": "cache-keys"}}}, "set it"),
        (
            {"redis": {"url": "redis://redis:6379/0"}, "secrets": {"generateCacheKeys": False}},
            "needs cache keys",
        ),
    ],
    ids=["two-redis-urls", "keys-without-secret", "redis-without-cache-keys"],
)
def test_contradictory_values_fail_the_render(chart: helm.Chart, values: Doc, message: str) -> None:
    """Combinations the schema cannot express fail the render with a message saying what to do."""
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_network_policy_admits_callers_and_prometheus_and_limits_egress(
    renders: dict[str, Rendered],
) -> None:
    """Ingress: configured peers + Prometheus on http; egress: DNS, Redis ports, issuer CIDRs."""
    assert "NetworkPolicy" not in renders["default-values.yaml"].kinds()
    values = load_yaml(CHART / "ci" / "existing-secret-sentinel-values.yaml")
    rendered = renders["existing-secret-sentinel-values.yaml"]
    policy = rendered.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == rendered.one("Service")["spec"]["selector"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    callers, prometheus = policy["ingress"]
    assert callers["from"] == values["networkPolicy"]["ingress"]["from"]
    assert callers["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert prometheus["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }
    dns, redis_rule, issuer, extra = policy["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert [p["port"] for p in redis_rule["ports"]] == [6379, 26379]
    assert issuer["to"] == [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.169.254/32"]}}
    ]
    assert issuer["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert extra == values["networkPolicy"]["egress"]["extra"][0]


def test_service_monitor_scrapes_the_service(renders: dict[str, Rendered]) -> None:
    """The ServiceMonitor (a CRD, checked by hand) selects the Service and scrapes /metrics."""
    assert "ServiceMonitor" not in renders["default-values.yaml"].kinds()
    rendered = renders["existing-secret-sentinel-values.yaml"]
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = rendered.one("Service")
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def test_grafana_dashboard_config_map_carries_the_dashboard(renders: dict[str, Rendered]) -> None:
    """Optional ConfigMap labelled grafana_dashboard: "1" holding dashboards/token-broker.json."""
    assert len(renders["default-values.yaml"].all("ConfigMap")) == 1
    rendered = renders["existing-secret-sentinel-values.yaml"]
    (dashboard,) = [c for c in rendered.all("ConfigMap") if "token-broker.json" in c["data"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert json.loads(dashboard["data"]["token-broker.json"]) == json.loads(DASHBOARD.read_text())


def test_notes_warn_about_several_replicas_without_redis(renders: dict[str, Rendered]) -> None:
    """NOTES.txt names the service URL, and warns when replicas > 1 run without Redis."""
    default = renders["default-values.yaml"].notes
    assert f"http://{RELEASE}.{NAMESPACE}.svc:8080" in default
    assert "WARNING: more than one replica without Redis" in default
    assert "WARNING" not in renders[PRODUCTION.name].notes
    assert "WARNING" not in renders["single-replica-values.yaml"].notes


def test_production_config_is_a_valid_broker_config(
    renders: dict[str, Rendered], tmp_path: Path
) -> None:
    """The production example's rendered broker YAML passes the broker's own validation."""
    raw = renders[PRODUCTION.name].broker_config()
    stand_in = tmp_path / "stand-in"
    stand_in.write_text("not-a-real-secret\n")
    for profile in raw["profiles"].values():
        profile["client_secret"] = {"file": str(stand_in)}
    for issuer in raw["trusted_issuers"].values():
        issuer["ca_file"] = str(stand_in)
    config = parse_config(raw, base_dir=tmp_path)
    assert set(config.profiles) == {"ingestion"}


def test_example_ingestion_cronjob_fits_the_production_release(
    renders: dict[str, Rendered],
) -> None:
    """The example pod: valid, right audience and URL, bound to a grant, admitted by the policy."""
    documents = [doc for doc in yaml.safe_load_all(EXAMPLE_CRONJOB.read_text()) if doc]
    for doc in documents:
        validate(doc)
    (cronjob,) = [d for d in documents if d["kind"] == "CronJob"]
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    pod = template["spec"]
    namespace = cronjob["metadata"]["namespace"]
    production = renders[PRODUCTION.name]
    config = production.broker_config()

    # The projected token: minted for the `kind: kubernetes` issuer's audience, at the path
    # the CLI reads by default, in the init container only.
    (volume,) = [v for v in pod["volumes"] if v["name"] == "broker-credential"]
    (source,) = volume["projected"]["sources"]
    (cluster,) = [i for i in config["trusted_issuers"].values() if i["kind"] == "kubernetes"]
    assert source["serviceAccountToken"]["audience"] == cluster["audience"]
    (init,) = pod["initContainers"]
    (mount,) = [m for m in init["volumeMounts"] if m["name"] == "broker-credential"]
    assert Path(mount["mountPath"]) / source["serviceAccountToken"]["path"] == (
        DEFAULT_CREDENTIAL_PATH
    )
    assert pod["automountServiceAccountToken"] is False
    assert init["args"][0] == "sidecar"
    assert "--once" in init["args"]

    # TOKEN_BROKER_URL is the rendered Service.
    service = production.one("Service")
    url = f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"
    assert {e["name"]: e["value"] for e in init["env"]}["TOKEN_BROKER_URL"] == url

    # The pod's service account is a caller with a grant for --profile that allows --min-ttl.
    args = init["args"]
    profile = args[args.index("--profile") + 1]
    min_ttl = args[args.index("--min-ttl") + 1]
    (caller,) = [
        c
        for c in config["callers"].values()
        if c.get("kubernetes")
        == {"namespace": namespace, "service_account": pod["serviceAccountName"]}
    ]
    (grant,) = [g for g in caller["grants"] if g["profile"] == profile]
    assert parse_duration(min_ttl) <= parse_duration(grant["max_ttl"])

    # The broker's NetworkPolicy admits the pod (namespace by name label, pod by its labels).
    pod_labels = template["metadata"]["labels"]
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    callers = production.one("NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert any(
        peer["namespaceSelector"]["matchLabels"].items() <= namespace_labels.items()
        and peer.get("podSelector", {}).get("matchLabels", {}).items() <= pod_labels.items()
        for peer in callers
    )


def dashboard_expressions(dashboard: Doc) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    expressions += [
        variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return expressions


def registered_series() -> set[str]:
    """Every series name the metrics REGISTRY can expose, from its collected families."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    return {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in suffixes[family.type]
    }


def test_dashboard_queries_only_metrics_the_broker_exposes() -> None:
    """Each token_broker_* name in the dashboard is a series of service.observe.metrics.REGISTRY."""
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        name
        for expr in dashboard_expressions(dashboard)
        for name in re.findall(r"\btoken_broker_[a-z0-9_]+", expr)
    }
    assert used
    assert used <= registered_series(), used - registered_series()
    # The panels the runbook relies on are there.
    for required in (
        "token_broker_handouts_total",
        "token_broker_cache_lookups_total",
        "token_broker_issuer_requests_total",
        "token_broker_issuer_request_duration_seconds_bucket",
        "token_broker_handout_remaining_seconds_bucket",
        "token_broker_circuit_state",
        "token_broker_redis_up",
        "token_broker_rate_limited_total",
    ):
        assert required in used, required


def test_dashboard_is_well_formed() -> None:
    """Unique panel ids, a uid, every panel on the ${datasource} variable, p50 and p99 present."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "token-broker"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    expressions = " ".join(dashboard_expressions(dashboard))
    assert "histogram_quantile(0.5," in expressions
    assert "histogram_quantile(0.99," in expressions
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "profile"}
