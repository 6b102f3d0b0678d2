"""The broker YAML: a good file loads and indexes; a bad one lists every problem at once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from service.config.load import load_config, parse_config
from service.config.schema import ProfileSpec
from service.config.settings import Settings
from service.errors import ConfigError
from service.models import Caller, TokenRequest
from service.runtime import load_checked
from service.store.crypto import new_cache_key
from service.upstream.providers import PROVIDERS
from service.upstream.providers.base import Provider

AIRFLOW_KEY = "tbk_1a2b3c4d_airflow-0123456789abcdefABCDEF"
READER_KEY = "tbk_5e6f7a8b_reader-0123456789abcdefABCDEF"
CLIENT_SECRET = "s3cr3t-client-value-do-not-print"
INLINE_SECRET = "inline-Sup3rS3cret-value-7f3a"
UNSET_ENV = "TOKEN_BROKER_TEST_SECRET_THAT_IS_NEVER_SET"


def sha(key: str) -> str:
    """The ``api_key_sha256`` of ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TOKEN_BROKER_* variable of the developer's shell leaks into Settings."""
    for name in list(os.environ):
        if name.startswith("TOKEN_BROKER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A client secret file next to the config."""
    path = tmp_path / "client.secret"
    path.write_text(CLIENT_SECRET + "\n")
    return path


def good_document() -> dict[str, Any]:
    """A valid config: one profile, two API-key callers and a Kubernetes caller."""
    return {
        "profiles": {
            "ingestion": {
                "provider": "oidc",
                "issuer": "https://idp.example.com/realms/om/",
                "client_id": "0oa123",
                "client_secret": {"file": "client.secret"},
                "scopes": ["ingestion", "read", "write"],
                "audience": "urn:openmetadata",
            },
        },
        "callers": {
            "airflow": {
                "api_key_sha256": sha(AIRFLOW_KEY),
                "grants": [{"profile": "ingestion", "max_ttl": "4h"}],
            },
            "reader": {
                "api_key_sha256": sha(READER_KEY),
                "grants": [{"profile": "ingestion", "scopes": ["read"], "max_ttl": 600}],
            },
            "pods": {
                "kubernetes": {"namespace": "ingestion", "service_account": "runner"},
                "grants": [{"profile": "ingestion"}],
            },
        },
        "trusted_issuers": {
            "cluster": {
                "kind": "kubernetes",
                "issuer": "https://kubernetes.default.svc.cluster.local",
                "audience": "token-broker",
            }
        },
    }


def problems_of(raw: object, base_dir: Path, **kwargs: bool) -> list[str]:
    """The problems ``parse_config`` reports for ``raw`` (it must raise)."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=base_dir, **kwargs)
    return info.value.problems


def has(problems: list[str], *fragments: str) -> bool:
    """Whether one problem line holds every fragment."""
    return any(all(f in line for f in fragments) for line in problems)


# -- a good config ----------------------------------------------------------------------------


def test_valid_config_loads_profiles_policy_and_key_index(
    tmp_path: Path, secret_file: Path
) -> None:
    """A valid document yields profiles, a working policy and a hash -> caller index."""
    config = parse_config(good_document(), base_dir=tmp_path)
    assert set(config.profiles) == {"ingestion"}
    profile = config.profiles["ingestion"]
    assert profile.issuer == "https://idp.example.com/realms/om"  # trailing slash dropped
    assert profile.client_secret is not None
    assert profile.client_secret.read() == CLIENT_SECRET
    assert profile.private_key is None
    assert set(config.callers) == {"airflow", "reader", "pods"}
    assert config.api_keys == {sha(AIRFLOW_KEY): "airflow", sha(READER_KEY): "reader"}
    airflow_rule = config.policy.rule("airflow", "ingestion")
    assert airflow_rule is not None
    assert airflow_rule.scopes == frozenset({"ingestion", "read", "write"})
    assert airflow_rule.max_ttl == 4 * 3600
    reader_rule = config.policy.rule("reader", "ingestion")
    assert reader_rule is not None
    assert reader_rule.scopes == frozenset({"read"})
    assert reader_rule.max_ttl == 600
    grant = config.policy.decide(Caller("pods"), TokenRequest(profile="ingestion"))
    assert grant.scopes == ("ingestion", "read", "write")
    assert config.policy.profiles_for(Caller("reader")) == ("ingestion",)


def test_a_caller_may_hold_two_key_hashes_while_rotating(tmp_path: Path, secret_file: Path) -> None:
    """api_key_sha256 as a list: both keys map to the caller; an empty list is a problem."""
    document = good_document()
    document["callers"]["airflow"]["api_key_sha256"] = [sha(AIRFLOW_KEY), sha("next-key")]
    config = parse_config(document, base_dir=tmp_path)
    assert config.api_keys[sha(AIRFLOW_KEY)] == "airflow"
    assert config.api_keys[sha("next-key")] == "airflow"
    document["callers"]["airflow"]["api_key_sha256"] = []
    assert has(problems_of(document, tmp_path), "callers.airflow.api_key_sha256", "empty list")


def test_load_config_reads_yaml_relative_to_its_directory(
    tmp_path: Path, secret_file: Path
) -> None:
    """load_config parses the file and resolves secret files against the config's directory."""
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(good_document()))
    config = load_config(path)
    secret = config.profiles["ingestion"].client_secret
    assert secret is not None
    assert secret.file == secret_file
    assert "client.secret" in repr(secret)
    assert CLIENT_SECRET not in repr(secret)


def test_secret_from_env_is_read_on_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An {env: NAME} secret is accepted when set and re-read when it changes."""
    monkeypatch.setenv("TB_TEST_CLIENT_SECRET", "first")
    doc = good_document()
    doc["profiles"]["ingestion"]["client_secret"] = {"env": "TB_TEST_CLIENT_SECRET"}
    config = parse_config(doc, base_dir=tmp_path)
    secret = config.profiles["ingestion"].client_secret
    assert secret is not None
    assert secret.read() == "first"
    monkeypatch.setenv("TB_TEST_CLIENT_SECRET", "rotated")
    assert secret.read() == "rotated"


def test_inline_secret_is_accepted_when_allowed(tmp_path: Path) -> None:
    """allow_inline_secrets=True admits an inline client secret (local development)."""
    doc = good_document()
    doc["profiles"]["ingestion"]["client_secret"] = INLINE_SECRET
    config = parse_config(doc, base_dir=tmp_path, allow_inline_secrets=True)
    secret = config.profiles["ingestion"].client_secret
    assert secret is not None
    assert secret.read() == INLINE_SECRET
    assert INLINE_SECRET not in repr(secret)
    assert "inline" in secret.describe()


def write_ec_key(path: Path) -> None:
    """Write a fresh unencrypted P-256 private key as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_private_key_jwt_accepts_a_matching_pem_key(tmp_path: Path) -> None:
    """private_key_jwt with an EC PEM key and ES256 loads, with no client secret."""
    write_ec_key(tmp_path / "signing.pem")
    doc = good_document()
    profile = doc["profiles"]["ingestion"]
    del profile["client_secret"]
    profile |= {"auth_method": "private_key_jwt", "private_key": {"file": "signing.pem"}}
    profile["signing_alg"] = "ES256"
    config = parse_config(doc, base_dir=tmp_path)
    loaded = config.profiles["ingestion"]
    assert loaded.client_secret is None
    assert loaded.private_key is not None


# -- one broken config, every problem ---------------------------------------------------------


def broken_document(tmp_path: Path) -> dict[str, Any]:
    """A config with one instance of each problem class, each in its own place."""
    not_pem = tmp_path / "not-a-key.pem"
    not_pem.write_text("this is not a PEM private key\n")
    (tmp_path / "client.secret").write_text(CLIENT_SECRET)
    good = {"client_id": "c", "client_secret": {"file": "client.secret"}, "scopes": ["read"]}
    return {
        "profiles": {
            "good": {"issuer": "https://idp.example.com", **good},
            "typo": {"issuer": "https://idp.example.com", "clientid": "x", **good},
            "plainhttp": {**good, "issuer": "http://idp.example.com"},
            "nonurl": {**good, "issuer": "not a url"},
            "nofile": {
                **good,
                "issuer": "https://idp.example.com",
                "client_secret": {"file": "missing.secret"},
            },
            "noenv": {
                **good,
                "issuer": "https://idp.example.com",
                "client_secret": {"env": UNSET_ENV},
            },
            "inline": {**good, "issuer": "https://idp.example.com", "client_secret": INLINE_SECRET},
            "reserved": {
                **good,
                "issuer": "https://idp.example.com",
                "extra_params": {"scope": "admin", "prompt": "none"},
            },
            "badkey": {
                "issuer": "https://idp.example.com",
                "client_id": "c",
                "auth_method": "private_key_jwt",
                "private_key": {"file": str(not_pem)},
            },
        },
        "callers": {
            "ghostgrant": {"api_key_sha256": sha("a"), "grants": [{"profile": "nowhere"}]},
            "first": {"api_key_sha256": sha("dup"), "grants": [{"profile": "good"}]},
            "second": {"api_key_sha256": sha("dup"), "grants": [{"profile": "good"}]},
            "greedy": {
                "api_key_sha256": sha("b"),
                "grants": [{"profile": "good", "scopes": ["read", "admin"]}],
            },
            "anonymous": {"grants": [{"profile": "good"}]},
            "forever": {
                "api_key_sha256": sha("c"),
                "grants": [{"profile": "good", "max_ttl": "forever"}],
            },
        },
        "extras": {"oops": True},
    }


def test_broken_config_reports_every_problem_in_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ConfigError names each problem class; none is hidden behind another."""
    monkeypatch.delenv(UNSET_ENV, raising=False)
    problems = problems_of(broken_document(tmp_path), tmp_path)
    expected = {
        "unknown top-level key": ("extras", "unknown key"),
        "unknown key in a profile": ("profiles.typo.clientid", "unknown key", "`client_id`"),
        "plain http issuer": ("profiles.plainhttp.issuer", "https"),
        "non-URL issuer": ("profiles.nonurl.issuer",),
        "missing secret file": (
            "profiles.nofile.client_secret",
            "missing.secret",
            "does not exist",
        ),
        "unset env secret": ("profiles.noenv.client_secret", UNSET_ENV, "unset or empty"),
        "inline secret refused": ("profiles.inline.client_secret", "inline secrets are refused"),
        "reserved extra param": ("profiles.reserved.extra_params.scope", "reserved"),
        "non-PEM private key": ("profiles.badkey.private_key", "PEM"),
        "unknown profile in grant": ("callers.ghostgrant.grants[0].profile", "nowhere"),
        "duplicate key hash": ("callers.second.api_key_sha256", "first"),
        "grant scopes outside profile": ("callers.greedy.grants[0].scopes", "admin"),
        "caller without credential": ("callers.anonymous", "credential"),
        "bad max_ttl": ("callers.forever.grants[0].max_ttl",),
    }
    missing = [name for name, fragments in expected.items() if not has(problems, *fragments)]
    assert not missing, (missing, problems)
    # A clean profile or a good reserved-free extra param is not reported.
    assert not any(line.startswith("profiles.good") for line in problems)
    assert not has(problems, "extra_params.prompt")
    assert not any(INLINE_SECRET in line for line in problems)
    assert not any(CLIENT_SECRET in line for line in problems)


def test_unknown_key_does_not_hide_the_profiles_other_problems(
    tmp_path: Path, secret_file: Path
) -> None:
    """A typo'd key in a profile is reported together with that profile's other problems."""
    doc = good_document()
    profile = doc["profiles"]["ingestion"]
    profile |= {"colour": "blue", "issuer": "http://idp.example.com", "client_secret": "inline"}
    problems = problems_of(doc, tmp_path)
    assert has(problems, "profiles.ingestion.colour", "unknown key"), problems
    assert has(problems, "profiles.ingestion.issuer", "https"), problems
    assert has(problems, "profiles.ingestion.client_secret", "inline secrets are refused"), problems


def test_config_error_message_counts_problems_without_content(tmp_path: Path) -> None:
    """str(ConfigError) is a count; the problems live in ``.problems``, free of secrets."""
    with pytest.raises(ConfigError) as info:
        parse_config(broken_document(tmp_path), base_dir=tmp_path)
    assert str(info.value) == f"{len(info.value.problems)} configuration problem(s)"
    assert INLINE_SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (None, "top level"),
        ([1, 2], "top level"),
        ("profiles", "top level"),
        ({}, "profiles: required"),
        ({"profiles": [], "callers": {}}, "profiles: must be a mapping"),
        ({"profiles": {"bad name!": {}}, "callers": {}}, "profiles.bad name!: names use"),
    ],
)
def test_structural_problems_are_reported(raw: object, fragment: str, tmp_path: Path) -> None:
    """A document of the wrong shape is a ConfigError naming the problem, not a crash."""
    problems = problems_of(raw, tmp_path)
    assert has(problems, fragment), problems


def test_missing_sections_are_both_reported(tmp_path: Path) -> None:
    """An empty mapping reports both profiles and callers as required."""
    problems = problems_of({}, tmp_path)
    assert has(problems, "profiles: required")
    assert has(problems, "callers: required")


def test_twice_granted_profile_is_reported(tmp_path: Path, secret_file: Path) -> None:
    """A caller granted the same profile twice is told to merge the grants."""
    doc = good_document()
    doc["callers"]["airflow"]["grants"].append({"profile": "ingestion"})
    assert has(problems_of(doc, tmp_path), "callers.airflow.grants[1].profile", "twice")


def test_auth_method_mismatches_are_reported(tmp_path: Path, secret_file: Path) -> None:
    """A client secret with private_key_jwt, and a private key without it, are both refused."""
    doc = good_document()
    doc["profiles"]["ingestion"]["private_key"] = {"file": "client.secret"}
    doc["profiles"]["jwt"] = {
        "issuer": "https://idp.example.com",
        "client_id": "c",
        "auth_method": "private_key_jwt",
        "client_secret": {"file": "client.secret"},
    }
    problems = problems_of(doc, tmp_path)
    assert has(problems, "profiles.ingestion.private_key", "private_key_jwt")
    assert has(problems, "profiles.jwt.client_secret", "not used")
    assert has(problems, "profiles.jwt.private_key", "required")


def test_pem_key_of_the_wrong_type_is_reported(tmp_path: Path) -> None:
    """An EC key with the default RS256 algorithm is refused."""
    write_ec_key(tmp_path / "ec.pem")
    doc = good_document()
    profile = doc["profiles"]["ingestion"]
    del profile["client_secret"]
    profile |= {"auth_method": "private_key_jwt", "private_key": {"file": "ec.pem"}}
    assert has(problems_of(doc, tmp_path), "profiles.ingestion.private_key", "RSA")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://idp.example.com",
        "https://user:pw@idp.example.com",
        "https://idp.example.com/?tenant=1",
        "https://idp.example.com:99999",
        "http://10.0.0.1",
    ],
)
def test_unusable_issuer_urls_are_refused(url: str, tmp_path: Path, secret_file: Path) -> None:
    """Wrong scheme, embedded credentials, query, bad port and remote plain http are refused."""
    doc = good_document()
    doc["profiles"]["ingestion"]["issuer"] = url
    problems = problems_of(doc, tmp_path)
    assert has(problems, "profiles.ingestion.issuer"), problems
    assert not any("pw@" in line for line in problems)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]"])
def test_plain_http_is_allowed_on_loopback(url: str, tmp_path: Path, secret_file: Path) -> None:
    """Plain http is accepted for a loopback issuer (local identity providers)."""
    doc = good_document()
    doc["profiles"]["ingestion"]["issuer"] = url
    assert parse_config(doc, base_dir=tmp_path).profiles["ingestion"].issuer == url


# -- providers ------------------------------------------------------------------------------


def test_onelogin_subdomain_derives_the_v2_issuer(tmp_path: Path, secret_file: Path) -> None:
    """provider onelogin with subdomain acme uses https://acme.onelogin.com/oidc/2."""
    doc = good_document()
    profile = doc["profiles"]["ingestion"]
    del profile["issuer"]
    profile |= {"provider": "onelogin", "subdomain": "acme"}
    config = parse_config(doc, base_dir=tmp_path)
    assert config.profiles["ingestion"].issuer == "https://acme.onelogin.com/oidc/2"


def test_onelogin_region_eu_derives_the_v1_eu_issuer(tmp_path: Path, secret_file: Path) -> None:
    """provider onelogin with only region eu uses the legacy EU v1 issuer."""
    doc = good_document()
    profile = doc["profiles"]["ingestion"]
    del profile["issuer"]
    profile |= {"provider": "onelogin", "region": "eu"}
    config = parse_config(doc, base_dir=tmp_path)
    assert config.profiles["ingestion"].issuer == "https://openid-connect-eu.onelogin.com/oidc"


def test_onelogin_without_subdomain_or_issuer_is_reported(
    tmp_path: Path, secret_file: Path
) -> None:
    """provider onelogin with nothing to find the issuer by names the subdomain field."""
    doc = good_document()
    profile = doc["profiles"]["ingestion"]
    del profile["issuer"]
    profile["provider"] = "onelogin"
    assert has(problems_of(doc, tmp_path), "profiles.ingestion.subdomain", "required")


def test_oidc_without_issuer_is_reported(tmp_path: Path, secret_file: Path) -> None:
    """provider oidc with neither issuer nor token_endpoint names the issuer field."""
    doc = good_document()
    del doc["profiles"]["ingestion"]["issuer"]
    assert has(problems_of(doc, tmp_path), "profiles.ingestion.issuer", "required")


def test_token_params_are_additive() -> None:
    """Scopes, audience, resource and extra params all reach the exchange together."""
    spec = ProfileSpec(
        client_id="c",
        issuer="https://idp.example.com",
        audience="urn:openmetadata",
        resource="https://om.example.com",
        extra_params={"organization": "acme"},
    )
    exchanging = [p for p in PROVIDERS.values() if p.name != "broker"]  # broker: no exchange
    for provider in (Provider(), *exchanging):
        params = provider.token_params(spec, ("read", "ingestion"))
        assert params == {
            "organization": "acme",
            "scope": "read ingestion",
            "audience": "urn:openmetadata",
            "resource": "https://om.example.com",
        }
        assert "scope" not in provider.token_params(spec, ())


# -- YAML and settings --------------------------------------------------------------------


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is one problem naming the file and the line."""
    path = tmp_path / "broker.yaml"
    path.write_text("profiles:\n  a:\n    client_id: x\n  b: [unclosed\ncallers: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert str(path) in problem
    assert "line 5" in problem, problem


def test_unreadable_config_file_is_reported(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError, not an OSError."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert has(info.value.problems, "absent.yaml", "cannot read")


def test_load_checked_reports_redis_without_cache_keys_with_yaml_problems(
    tmp_path: Path,
) -> None:
    """Redis without cache keys is listed alongside the YAML problems, in one error."""
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump({"profiles": {}, "callers": {"x": {}}, "bogus": 1}))
    settings = Settings(config=path, redis_url=SecretStr("redis://:redispass@127.0.0.1:6379/0"))
    with pytest.raises(ConfigError) as info:
        load_checked(settings)
    problems = info.value.problems
    assert has(problems, "TOKEN_BROKER_CACHE_KEYS", "required")
    assert has(problems, "bogus", "unknown key")
    assert has(problems, "callers.x", "credential")
    assert not any("redispass" in line for line in problems)


def test_load_checked_reports_a_malformed_cache_key_with_yaml_problems(tmp_path: Path) -> None:
    """A malformed cache key is listed alongside the YAML problems, never echoed."""
    path = tmp_path / "broker.yaml"
    path.write_text("profiles: [\n")
    bad_key = "c2hvcnQta2V5LW5vdC0zMi1ieXRlcw"
    settings = Settings(
        config=path,
        redis_url=SecretStr("redis://127.0.0.1:6379/0"),
        cache_keys=SecretStr(f"{new_cache_key()},{bad_key}"),
    )
    with pytest.raises(ConfigError) as info:
        load_checked(settings)
    problems = info.value.problems
    assert has(problems, "TOKEN_BROKER_CACHE_KEYS", "#2")
    assert has(problems, "not valid YAML")
    assert not any(bad_key in line for line in problems)


def test_load_checked_accepts_a_good_config_with_redis(tmp_path: Path, secret_file: Path) -> None:
    """A good YAML plus Redis and a valid cache key loads."""
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(good_document()))
    settings = Settings(
        config=path,
        redis_url=SecretStr("redis://127.0.0.1:6379/0"),
        cache_keys=SecretStr(new_cache_key()),
    )
    assert set(load_checked(settings).profiles) == {"ingestion"}


def test_load_checked_honours_allow_inline_secrets(tmp_path: Path) -> None:
    """TOKEN_BROKER_ALLOW_INLINE_SECRETS reaches the YAML check."""
    doc = good_document()
    doc["profiles"]["ingestion"]["client_secret"] = INLINE_SECRET
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError):
        load_checked(Settings(config=path))
    assert load_checked(Settings(config=path, allow_inline_secrets=True)).profiles


# -- trusted issuers and workload bindings ---------------------------------------------------


def test_kubernetes_caller_binds_to_the_only_cluster_issuer(
    tmp_path: Path, secret_file: Path
) -> None:
    """A kubernetes caller without issuer binds to the one kubernetes trusted issuer."""
    config = parse_config(good_document(), base_dir=tmp_path)
    cluster = config.trusted_issuers["cluster"]
    assert cluster.kind == "kubernetes"
    assert cluster.algorithms == ("RS256", "ES256")
    assert cluster.leeway == 30
    (binding,) = config.workloads
    assert binding.caller == "pods"
    assert binding.issuer == "cluster"
    assert binding.subject == "system:serviceaccount:ingestion:runner"
    assert binding.claims == {
        ("kubernetes.io", "namespace"): "ingestion",
        ("kubernetes.io", "serviceaccount", "name"): "runner",
    }


def test_generic_workload_binding_and_jwks_file_resolve(tmp_path: Path, secret_file: Path) -> None:
    """A workload caller binds subject and flat claims; jwks_file resolves next to the YAML."""
    (tmp_path / "ci-jwks.json").write_text('{"keys": []}')
    document = good_document()
    document["trusted_issuers"]["ci"] = {
        "issuer": "https://token.actions.githubusercontent.com/",
        "audience": "https://broker.example.com",
        "jwks_file": "ci-jwks.json",
        "leeway": "1m",
        "algorithms": ["RS256"],
        "required_claims": {"repository_owner": "acme"},
    }
    document["callers"]["deploy"] = {
        "workload": {"issuer": "ci", "subject": "repo:acme/data:ref:refs/heads/main"},
        "grants": [{"profile": "ingestion"}],
    }
    config = parse_config(document, base_dir=tmp_path)
    ci = config.trusted_issuers["ci"]
    assert ci.issuer == "https://token.actions.githubusercontent.com"
    assert ci.jwks_file == tmp_path / "ci-jwks.json"
    assert ci.leeway == 60
    assert ci.required_claims == {"repository_owner": "acme"}
    assert [b.caller for b in config.workloads] == ["pods", "deploy"]


def test_workload_identity_problems_are_all_reported(tmp_path: Path, secret_file: Path) -> None:
    """Bad issuers, unknown issuer names, HMAC algorithms and twin bindings are each reported."""
    document = good_document()
    document["trusted_issuers"] = {
        "cluster": {"kind": "kubernetes", "issuer": "http://k8s.example.com", "audience": "b"},
        "twin": {"kind": "kubernetes", "issuer": "http://k8s.example.com", "audience": "b"},
        "hmac": {"issuer": "https://ci.example.com", "audience": "b", "algorithms": ["HS256"]},
        "both": {
            "issuer": "https://other.example.com",
            "audience": "b",
            "jwks_url": "https://other.example.com/jwks",
            "jwks_file": "missing.json",
            "leeway": "1h",
        },
    }
    document["callers"]["ci"] = {
        "workload": {"issuer": "nowhere", "subject": "x"},
        "grants": [{"profile": "ingestion"}],
    }
    document["callers"]["pods2"] = {
        "kubernetes": {"namespace": "ingestion", "service_account": "runner", "issuer": "hmac"},
        "grants": [],
    }
    problems = problems_of(document, tmp_path)
    assert has(problems, "trusted_issuers.cluster.issuer", "https://")
    assert has(problems, "trusted_issuers.twin.issuer", "same issuer as trusted_issuers.cluster")
    assert has(problems, "trusted_issuers.hmac.algorithms")
    assert has(problems, "trusted_issuers.both", "not both")
    assert has(problems, "trusted_issuers.both.jwks_file", "does not exist")
    assert has(problems, "trusted_issuers.both.leeway", "at most 300")
    assert has(problems, "callers.pods.kubernetes.issuer", "several")
    assert has(problems, "callers.ci.workload.issuer", "unknown trusted issuer 'nowhere'")
    assert has(problems, "callers.pods2.kubernetes.issuer", "not a trusted issuer of kind")


def test_kubernetes_caller_without_a_cluster_issuer_is_reported(
    tmp_path: Path, secret_file: Path
) -> None:
    """A kubernetes binding needs a trusted issuer of kind kubernetes."""
    document = good_document()
    del document["trusted_issuers"]
    problems = problems_of(document, tmp_path)
    assert has(problems, "callers.pods.kubernetes.issuer", "no trusted issuer of kind kubernetes")


def test_two_callers_bound_to_one_identity_are_reported(tmp_path: Path, secret_file: Path) -> None:
    """Two callers matching the same service account would depend on order: refused."""
    document = good_document()
    document["callers"]["pods-again"] = {
        "kubernetes": {"namespace": "ingestion", "service_account": "runner"},
        "grants": [],
    }
    problems = problems_of(document, tmp_path)
    assert has(problems, "callers.pods-again", "same workload identity as caller 'pods'")


# -- one caller per token: ambiguous bindings refuse to start ---------------------------------

SA = "system:serviceaccount:ingestion:runner"
POD = {"namespace": "ingestion", "service_account": "runner", "pod": "nightly-0"}


def two_callers(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The good document with callers ``one`` and ``two`` bound as given, and issuer ``ci``."""
    document = good_document()
    del document["callers"]["pods"]
    document["trusted_issuers"]["ci"] = {"issuer": "https://ci.example.com", "audience": "b"}
    document["callers"]["one"] = {**first, "grants": []}
    document["callers"]["two"] = {**second, "grants": []}
    return document


def ci(subject: str = "repo:acme/data", **claims: str) -> dict[str, Any]:
    """A workload binding on the generic issuer ``ci``."""
    return {"workload": {"issuer": "ci", "subject": subject, "claims": claims}}


def on_cluster(subject: str = SA, **claims: str) -> dict[str, Any]:
    """A workload binding on the kubernetes issuer ``cluster``."""
    return {"workload": {"issuer": "cluster", "subject": subject, "claims": claims}}


@pytest.mark.parametrize(
    ("first", "second", "fragment"),
    [
        (ci(environment="prod"), ci(environment="prod"), "same workload identity"),
        (ci(environment="prod"), ci(team="data"), "neither binding is more specific"),
        (ci(environment="prod", a="1"), ci(environment="prod", b="2"), "neither binding"),
        ({"kubernetes": POD}, {"kubernetes": POD}, "same workload identity"),
        (on_cluster(), {"kubernetes": {**POD, "pod": None}}, "same workload identity"),
        (on_cluster(environment="prod"), {"kubernetes": POD}, "neither binding"),
    ],
    ids=["equal", "overlap", "overlap-sharing-one", "equal-pods", "sa-twice-mixed", "mixed"],
)
def test_bindings_that_could_match_one_token_refuse_to_load(
    first: dict[str, Any], second: dict[str, Any], fragment: str, tmp_path: Path, secret_file: Path
) -> None:
    """Attack: config order deciding which caller a token gets; refused naming both callers."""
    problems = problems_of(two_callers(first, second), tmp_path)
    assert has(problems, "callers.two", fragment, "caller 'one'"), problems
    assert len([line for line in problems if "caller 'one'" in line]) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (ci(), ci(environment="prod")),
        (ci(environment="prod"), ci(environment="prod", team="data")),
        ({"kubernetes": {**POD, "pod": None}}, {"kubernetes": POD}),
        (on_cluster(), {"kubernetes": POD}),
        (on_cluster(environment="prod"), {"kubernetes": {**POD, "pod": None}}),
        (ci("repo:acme/data"), ci("repo:acme/other")),
        (ci(environment="prod"), ci(environment="staging")),
        (ci(environment="prod", team="data"), ci(environment="staging")),
        ({"kubernetes": POD}, {"kubernetes": {**POD, "pod": "adhoc-1"}}),
    ],
    ids=[
        "subset",
        "subset-of-two",
        "pod-over-service-account",
        "pod-over-workload-service-account",
        "workload-claim-over-service-account",
        "different-subjects",
        "disagreeing-values",
        "disagreeing-one-value",
        "different-pods",
    ],
)
def test_bindings_one_token_cannot_both_match_or_nested_load(
    first: dict[str, Any], second: dict[str, Any], tmp_path: Path, secret_file: Path
) -> None:
    """Strictly nested (more specific wins) or disjoint bindings load; both callers are bound."""
    config = parse_config(two_callers(first, second), base_dir=tmp_path)
    assert {b.caller for b in config.workloads} == {"one", "two"}


def test_workload_binding_of_a_service_account_is_as_specific_as_a_kubernetes_one(
    tmp_path: Path, secret_file: Path
) -> None:
    """A cluster's sub implies its kubernetes.io claims, so both binding forms compare alike."""
    config = parse_config(two_callers(on_cluster(environment="prod"), ci()), base_dir=tmp_path)
    binding = next(b for b in config.workloads if b.caller == "one")
    assert binding.claims == {
        ("environment",): "prod",
        ("kubernetes.io", "namespace"): "ingestion",
        ("kubernetes.io", "serviceaccount", "name"): "runner",
    }


def test_kubernetes_caller_must_name_its_cluster_when_there_are_several(
    tmp_path: Path, secret_file: Path
) -> None:
    """With two clusters, a kubernetes caller without issuer is refused; naming one loads."""
    document = good_document()
    document["trusted_issuers"]["east"] = {
        "kind": "kubernetes",
        "issuer": "https://east.k8s.example.com",
        "audience": "token-broker",
    }
    problems = problems_of(document, tmp_path)
    assert has(problems, "callers.pods.kubernetes.issuer", "required", "several")
    document["callers"]["pods"]["kubernetes"]["issuer"] = "east"
    (binding,) = parse_config(document, base_dir=tmp_path).workloads
    assert binding.issuer == "east"


# -- replay rule per trusted issuer -----------------------------------------------------------


def test_replay_defaults_differ_by_kind_and_can_be_set(tmp_path: Path, secret_file: Path) -> None:
    """Generic issuers refuse a reused jti by default, clusters allow it; both are settable."""
    document = good_document()
    document["trusted_issuers"].update(
        {
            "ci": {"issuer": "https://ci.example.com", "audience": "b"},
            "lax": {"issuer": "https://lax.example.com", "audience": "b", "replay": "allow"},
            "nojti": {"issuer": "https://n.example.com", "audience": "b", "require_jti": False},
        }
    )
    issuers = parse_config(document, base_dir=tmp_path).trusted_issuers
    assert (issuers["cluster"].replay, issuers["cluster"].require_jti) == ("allow", True)
    assert (issuers["ci"].replay, issuers["ci"].require_jti) == ("refuse", True)
    assert issuers["lax"].replay == "allow"
    assert (issuers["nojti"].replay, issuers["nojti"].require_jti) == ("refuse", False)
    document["trusted_issuers"]["cluster"]["replay"] = "refuse"
    assert parse_config(document, base_dir=tmp_path).trusted_issuers["cluster"].replay == "refuse"
    document["trusted_issuers"]["cluster"]["replay"] = "sometimes"
    assert has(problems_of(document, tmp_path), "trusted_issuers.cluster.replay")
