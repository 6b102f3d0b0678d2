"""Config and cache-key problems in the broker's words: the path, the expected form, a hint."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from service.config.load import load_config, parse_config
from service.config.settings import Settings
from service.errors import ConfigError
from service.runtime import load_checked
from service.store.crypto import CacheKeyError, parse_cache_keys

CLIENT_SECRET = "s3cr3t-client-value-do-not-print"
NOT_A_HASH = "Sup3rSecretApiKey-pasted-instead-of-its-hash"
# Words of pydantic's own messages that must not reach an operator any more.
PYDANTIC_WORDS = ("constrained-str", "Extra inputs", "Value error", "String should", "Input should")


@pytest.fixture(autouse=True)
def _secret_file(tmp_path: Path) -> None:
    """The client secret file every profile below refers to."""
    (tmp_path / "client.secret").write_text(CLIENT_SECRET + "\n")


def document() -> dict[str, Any]:
    """A valid config: profile ``ingestion`` and caller ``airflow`` granted it."""
    return {
        "profiles": {
            "ingestion": {
                "issuer": "https://idp.example.com",
                "client_id": "c",
                "client_secret": {"file": "client.secret"},
                "scopes": ["ingestion", "read"],
            }
        },
        "callers": {
            "airflow": {
                "api_key_sha256": hashlib.sha256(b"key").hexdigest(),
                "grants": [{"profile": "ingestion", "max_ttl": "4h"}],
            }
        },
    }


def problems_of(raw: object, base_dir: Path) -> list[str]:
    """The problems ``parse_config`` reports for ``raw`` (it must raise)."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=base_dir)
    return info.value.problems


def lines_for(problems: list[str], path: str) -> list[str]:
    """The problem lines about exactly ``path``."""
    return [line for line in problems if line.startswith(f"{path}: ")]


def test_sample_config_is_valid(tmp_path: Path) -> None:
    """The document the other tests break loads as is."""
    assert set(parse_config(document(), base_dir=tmp_path).profiles) == {"ingestion"}


def test_bad_api_key_hash_says_what_is_expected_once_and_how_to_get_one(tmp_path: Path) -> None:
    """A non-hash api_key_sha256 is one line: 64 hex characters, or a list; new-key prints one."""
    doc = document()
    doc["callers"]["airflow"]["api_key_sha256"] = NOT_A_HASH
    (line,) = lines_for(problems_of(doc, tmp_path), "callers.airflow.api_key_sha256")
    assert "hex SHA-256" in line
    assert "64 characters 0-9a-f" in line
    assert "or a list of them" in line
    assert "token-broker new-key --caller airflow" in line
    assert NOT_A_HASH not in line


def test_unknown_key_suggests_the_closest_field(tmp_path: Path) -> None:
    """A typo'd key is 'unknown key; did you mean `client_secret`?', at any depth."""
    doc = document()
    profile = doc["profiles"]["ingestion"]
    profile["client_secert"] = profile.pop("client_secret")
    doc["callers"]["airflow"]["grants"][0]["max_tll"] = "1h"
    doc["profilez"] = {}
    problems = problems_of(doc, tmp_path)
    (line,) = lines_for(problems, "profiles.ingestion.client_secert")
    assert line.endswith("unknown key; did you mean `client_secret`?")
    assert lines_for(problems, "callers.airflow.grants[0].max_tll") == [
        "callers.airflow.grants[0].max_tll: unknown key; did you mean `max_ttl`?"
    ]
    assert lines_for(problems, "profilez") == ["profilez: unknown key; did you mean `profiles`?"]


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    """A key like no field names the fields the entry accepts instead."""
    doc = document()
    doc["callers"]["airflow"]["colour"] = "blue"
    (line,) = lines_for(problems_of(doc, tmp_path), "callers.airflow.colour")
    assert "unknown key; known keys: api_key_sha256, kubernetes, workload" in line


@pytest.mark.parametrize(
    ("where", "key", "value", "path", "expected"),
    [
        (
            "grant",
            "max_ttl",
            ["4h"],
            "callers.airflow.grants[0].max_ttl",
            "examples: 3600, 90m, 4h",
        ),
        ("grant", "max_ttl", "forever", "callers.airflow.grants[0].max_ttl", "examples: 3600"),
        (
            "grant",
            "scopes",
            ["re ad"],
            "callers.airflow.grants[0].scopes",
            "e.g. [ingestion, read]",
        ),
        ("profile", "auth_method", "basic", "profiles.ingestion.auth_method", "'private_key_jwt'"),
        ("profile", "provider", "okta", "profiles.ingestion.provider", "'onelogin' or 'broker'"),
        ("profile", "issuer", 7, "profiles.ingestion.issuer", "https URL"),
        ("profile", "subdomain", "Acme!", "profiles.ingestion.subdomain", "acme.onelogin.com"),
        ("profile", "client_id", "", "profiles.ingestion.client_id", "1 to 512 characters"),
        ("caller", "kubernetes", "ingestion", "callers.airflow.kubernetes", "service_account"),
        ("caller", "roles", ["root"], "callers.airflow.roles", "only role is admin"),
    ],
)
def test_bad_values_name_the_expected_form_with_an_example(  # noqa: PLR0917
    where: str, key: str, value: object, path: str, expected: str, tmp_path: Path
) -> None:
    """Each bad value is one line: its path, the expected form, no pydantic jargon."""
    doc = document()
    target = {
        "grant": doc["callers"]["airflow"]["grants"][0],
        "profile": doc["profiles"]["ingestion"],
        "caller": doc["callers"]["airflow"],
    }[where]
    target[key] = value
    problems = problems_of(doc, tmp_path)
    (line,) = lines_for(problems, path)
    assert expected in line, line
    assert not any(word in line for line in problems for word in PYDANTIC_WORDS), problems


def test_kubernetes_names_and_algorithms_have_their_own_hints(tmp_path: Path) -> None:
    """A bad namespace gets the Kubernetes name rule; an HMAC algorithm the asymmetric list."""
    doc = document()
    doc["callers"]["pods"] = {
        "kubernetes": {"namespace": "Ingestion_NS", "service_account": "runner"},
        "grants": [],
    }
    doc["trusted_issuers"] = {
        "cluster": {
            "kind": "kubernetes",
            "issuer": "https://k8s.example.com",
            "audience": "token-broker",
            "algorithms": ["HS256", "none"],
        }
    }
    problems = problems_of(doc, tmp_path)
    (namespace,) = lines_for(problems, "callers.pods.kubernetes.namespace")
    assert "Kubernetes name" in namespace
    assert "e.g. ingestion" in namespace
    (algorithms,) = lines_for(problems, "trusted_issuers.cluster.algorithms")
    assert "HMAC and none are refused" in algorithms
    assert "e.g. [RS256, ES256]" in algorithms


def test_many_broken_things_are_each_reported_once_without_bogus_unknown_profile(
    tmp_path: Path,
) -> None:
    """Typo'd auth_method, bad hash, unknown key, bad duration: each once, no 'unknown profile'."""
    doc = document()
    profile = doc["profiles"]["ingestion"]
    profile |= {"auth_method": "client_secret_bassic", "issuer": "http://idp.example.com"}
    profile["colour"] = "blue"
    airflow = doc["callers"]["airflow"]
    airflow["api_key_sha256"] = NOT_A_HASH
    airflow["grants"] = [{"profile": "ingestion", "max_ttl": "4 hours", "scopes": ["admin"]}]
    doc["callers"]["reader"] = {
        "api_key_sha256": hashlib.sha256(b"other").hexdigest(),
        "grants": [{"profile": "ingestion"}],
    }
    problems = problems_of(doc, tmp_path)
    expected = {
        "profiles.ingestion.auth_method": "client_secret_basic",
        "profiles.ingestion.colour": "unknown key",
        # Checked although auth_method is broken: the typo hides nothing else.
        "profiles.ingestion.issuer": "https",
        "callers.airflow.api_key_sha256": "new-key --caller airflow",
        "callers.airflow.grants[0].max_ttl": "not a duration",
        "callers.airflow.grants[0].scopes": "admin",
    }
    for path, fragment in expected.items():
        lines = lines_for(problems, path)
        assert len(lines) == 1, (path, problems)
        assert fragment in lines[0], (path, problems)
    assert len(problems) == len(expected), problems
    assert not any("unknown profile" in line for line in problems)
    # A bad hash does not also make the caller look credential-less.
    assert not any("needs a credential" in line for line in problems)
    assert not any(NOT_A_HASH in line or CLIENT_SECRET in line for line in problems)


def test_a_broken_auth_method_still_checks_the_secret_it_names(tmp_path: Path) -> None:
    """With auth_method typo'd, a missing secret file is reported; no secret is demanded."""
    doc = document()
    profile = doc["profiles"]["ingestion"]
    profile["auth_method"] = "private_key_jwk"
    profile["client_secret"] = {"file": "missing.secret"}
    problems = problems_of(doc, tmp_path)
    assert lines_for(problems, "profiles.ingestion.client_secret")[0].endswith("does not exist")
    assert not lines_for(problems, "profiles.ingestion.private_key")
    assert len(problems) == 2, problems


def test_a_broken_trusted_issuer_is_not_reported_unknown_by_its_callers(tmp_path: Path) -> None:
    """A trusted issuer with a typo'd kind exists: its workload callers do not call it unknown."""
    doc = document()
    doc["trusted_issuers"] = {
        "ci": {"kind": "generik", "issuer": "https://ci.example.com", "audience": "broker"}
    }
    doc["callers"]["deploy"] = {"workload": {"issuer": "ci", "subject": "repo:acme/data"}}
    doc["callers"]["pods"] = {"kubernetes": {"namespace": "ingestion", "service_account": "r"}}
    problems = problems_of(doc, tmp_path)
    assert problems == ["trusted_issuers.ci.kind: expected 'kubernetes' or 'generic'"], problems


def test_yaml_syntax_error_gives_line_column_and_reason_but_not_the_text(tmp_path: Path) -> None:
    """A YAML error names the 1-based line and column and the parser's reason, no snippet."""
    path = tmp_path / "broker.yaml"
    path.write_text(f"profiles:\n  a:\n    client_secret: {CLIENT_SECRET}: oops\ncallers: {{}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: not valid YAML at line 3, column ")
    assert "mapping values are not allowed here" in problem
    assert CLIENT_SECRET not in problem


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("kQx7z", "#1 is not URL-safe base64"),
        ("c2hvcnQta2V5", "#1 is 9 bytes; 32 are required"),
        (" , ", "no cache key given"),
    ],
)
def test_cache_key_errors_point_at_new_cache_key_without_the_key(text: str, fragment: str) -> None:
    """A malformed, short or empty cache key says so and how to get one, never echoing it."""
    with pytest.raises(CacheKeyError) as info:
        parse_cache_keys(text)
    message = str(info.value)
    assert fragment in message
    assert "token-broker new-cache-key" in message
    assert text.strip(" ,") == "" or text not in message


def test_missing_cache_keys_with_redis_point_at_new_cache_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis without TOKEN_BROKER_CACHE_KEYS is a problem naming new-cache-key."""
    monkeypatch.delenv("TOKEN_BROKER_CACHE_KEYS", raising=False)
    monkeypatch.delenv("TOKEN_BROKER_CACHE_KEYS_FILE", raising=False)
    path = tmp_path / "broker.yaml"
    path.write_text("profiles: {}\ncallers: {}\n")
    settings = Settings(config=path, redis_url=SecretStr("redis://127.0.0.1:6379/0"))
    with pytest.raises(ConfigError) as info:
        load_checked(settings)
    (problem,) = [p for p in info.value.problems if "CACHE_KEYS" in p]
    assert "required with TOKEN_BROKER_REDIS_URL" in problem
    assert "token-broker new-cache-key" in problem


def test_unreadable_cache_keys_file_points_at_new_cache_key(tmp_path: Path) -> None:
    """TOKEN_BROKER_CACHE_KEYS_FILE that cannot be read says how to write one."""
    with pytest.raises(ValueError, match="new-cache-key") as info:
        Settings(cache_keys_file=tmp_path / "absent")
    assert "TOKEN_BROKER_CACHE_KEYS_FILE" in str(info.value)
