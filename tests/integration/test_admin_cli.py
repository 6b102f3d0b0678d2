"""``token-broker admin`` as a real subprocess against a real broker and the real oidc-provider.

One broker subprocess (in-process cache) serves the module; its config has an admin caller
(``secops``), two granted callers, an idle one and a Kubernetes-bound one.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from service.observe.audit import fingerprint
from tests.support import OidcProvider, free_port
from tests.support.broker import write_config
from tests.support.broker_process import BrokerProcess, broker_env, module_broker, run_cli


@pytest.fixture(scope="module")
def broker(
    oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker subprocess for this module whose config has the admin caller ``secops``."""
    directory = tmp_path_factory.mktemp("admin-cli-broker")
    files = write_config(
        directory,
        oidc_provider,
        callers={
            "airflow": {"grants": [{"profile": "ingestion", "max_ttl": "4h"}]},
            "reader": {"grants": [{"profile": "ingestion", "scopes": ["read"]}]},
            "secops": {"roles": ["admin"], "grants": []},
            "pods": {
                "kubernetes": {"namespace": "ingestion", "service_account": "runner"},
                "grants": [{"profile": "ingestion", "scopes": ["read"]}],
            },
        },
        trusted_issuers={
            "cluster": {
                "kind": "kubernetes",
                "issuer": "https://kubernetes.default.svc",
                "audience": "token-broker",
                "jwks_url": "https://127.0.0.1:9/openid/v1/jwks",
            }
        },
    )
    with module_broker(oidc_provider, directory, files) as proc:
        yield proc


def cli(broker: BrokerProcess, caller: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m service ARGS`` as ``caller`` (its API key in TOKEN_BROKER_CREDENTIAL)."""
    env = broker_env(TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL=broker.files.keys[caller])
    return run_cli(args, env)


def hand_out(broker: BrokerProcess, caller: str = "airflow") -> str:
    """One token for ``caller`` through ``token-broker token``."""
    result = cli(broker, caller, ["token", "--profile", "ingestion"])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def assert_no_secrets(broker: BrokerProcess, text: str) -> None:
    """No API key, key hash or client secret of the config appears in ``text``."""
    for secret in broker.files.secrets:
        assert secret not in text
    assert not re.search(r"\b[0-9a-f]{64}\b", text)


def test_profiles_shows_cached_scope_sets_with_life_and_fingerprint_never_the_token(
    broker: BrokerProcess, issuer: OidcProvider
) -> None:
    """admin profiles: issuer, circuit, each cached scope set with remaining life and the
    audit fingerprint, in a table and as JSON; the token itself never appears."""
    token = hand_out(broker)
    table = cli(broker, "secops", ["admin", "profiles"])
    assert table.returncode == 0, table.stderr
    assert "ingestion" in table.stdout
    assert issuer.issuer in table.stdout
    assert "closed" in table.stdout
    assert fingerprint(token) in table.stdout
    assert re.search(r"\b\d+h\d\dm\b|\b\d+m\d\ds\b", table.stdout)
    assert token not in table.stdout + table.stderr
    assert_no_secrets(broker, table.stdout)

    raw = cli(broker, "secops", ["admin", "profiles", "--json"])
    assert raw.returncode == 0, raw.stderr
    (profile,) = json.loads(raw.stdout)["profiles"]
    entry = next(e for e in profile["cached"] if e["fingerprint"] == fingerprint(token))
    assert 0 < entry["expires_in"] <= 3600
    assert profile["circuit"] == "closed"
    assert token not in raw.stdout


def test_policy_lists_who_may_get_what_and_filters_without_key_hashes(
    broker: BrokerProcess,
) -> None:
    """admin policy: every caller's credential kinds, roles, grants with scopes and max_ttl;
    --profile and --caller narrow it; no key hash ever appears."""
    result = cli(broker, "secops", ["admin", "policy"])
    assert result.returncode == 0, result.stderr
    for name in ("airflow", "reader", "secops", "pods"):
        assert name in result.stdout
    assert "kubernetes ingestion/runner" in result.stdout
    assert "4h00m" in result.stdout
    assert_no_secrets(broker, result.stdout)

    raw = cli(broker, "secops", ["admin", "policy", "--json"])
    assert raw.returncode == 0, raw.stderr
    callers = {c["name"]: c for c in json.loads(raw.stdout)["callers"]}
    assert callers["airflow"]["credentials"] == [{"kind": "api_key", "keys": 1}]
    assert callers["airflow"]["grants"][0]["max_ttl"] == 4 * 3600
    assert callers["reader"]["grants"] == [
        {"profile": "ingestion", "scopes": ["read"], "max_ttl": None}
    ]
    assert callers["secops"]["roles"] == ["admin"]
    assert callers["pods"]["credentials"][0]["kind"] == "kubernetes"
    assert_no_secrets(broker, raw.stdout)

    by_profile = cli(broker, "secops", ["admin", "policy", "--profile", "ingestion", "--json"])
    assert by_profile.returncode == 0, by_profile.stderr
    assert {c["name"] for c in json.loads(by_profile.stdout)["callers"]} == {
        "airflow",
        "reader",
        "pods",
    }
    by_caller = cli(broker, "secops", ["admin", "policy", "--caller", "reader", "--json"])
    assert by_caller.returncode == 0, by_caller.stderr
    assert [c["name"] for c in json.loads(by_caller.stdout)["callers"]] == ["reader"]


def test_policy_unknown_name_is_404_without_echoing_it(broker: BrokerProcess) -> None:
    """GET /v1/policy with an unknown profile or caller: 404, RFC 6749 body, name not echoed;
    the CLI says so in one line and exits 1."""
    probe = "tbk_pasted-by-mistake"
    for param in ("profile", "caller"):
        response = httpx.get(
            broker.url + "/v1/policy",
            params={param: probe},
            headers={"Authorization": f"Bearer {broker.files.keys['secops']}"},
            trust_env=False,
        )
        assert response.status_code == 404
        assert response.json() == {
            "error": "invalid_request",
            "error_description": f"no such {param}",
        }
        assert probe not in response.text
        result = cli(broker, "secops", ["admin", "policy", f"--{param}", probe])
        assert result.returncode == 1
        assert result.stderr.strip() == f"token-broker admin: no such {param}"
    broker.wait_for_audit(
        lambda r: r.get("action") == "policy" and r["outcome"] == "unknown_caller"
    )


def test_invalidate_sends_the_next_request_to_the_issuer(
    broker: BrokerProcess, issuer: OidcProvider
) -> None:
    """admin invalidate PROFILE drops the cached token: the next hand-out is a new exchange."""
    hand_out(broker, "reader")
    hand_out(broker, "reader")  # cached: no new exchange
    before = issuer.proxy.token_requests
    result = cli(broker, "secops", ["admin", "invalidate", "ingestion", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"profile": "ingestion", "invalidated": True}
    hand_out(broker, "reader")
    assert issuer.proxy.token_requests == before + 1
    text = cli(broker, "secops", ["admin", "invalidate", "ingestion"])
    assert text.returncode == 0, text.stderr
    assert "ingestion" in text.stdout
    broker.wait_for_audit(
        lambda r: (
            r.get("action") == "invalidate" and r["caller"] == "secops" and r["outcome"] == "ok"
        )
    )


@pytest.mark.parametrize("command", [["profiles"], ["policy"], ["invalidate", "ingestion"]])
def test_non_admin_caller_gets_one_line_and_exit_1(
    broker: BrokerProcess, command: list[str]
) -> None:
    """A caller without the admin role: exit 1, one stderr line naming the missing role."""
    result = cli(broker, "airflow", ["admin", *command])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "token-broker admin: this caller lacks the admin role"


def test_refused_credential_and_unreachable_broker_are_one_line_exit_1(
    broker: BrokerProcess,
) -> None:
    """An unknown credential (401) and a broker nobody listens for: one stderr line, exit 1."""
    env = broker_env(TOKEN_BROKER_URL=broker.url, TOKEN_BROKER_CREDENTIAL="tbk_00000000_nobody-x")
    refused = run_cli(["admin", "profiles"], env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("token-broker admin: the broker refused the credential: ")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "tbk_00000000_nobody-x" not in refused.stderr

    env["TOKEN_BROKER_URL"] = f"http://127.0.0.1:{free_port()}"
    down = run_cli(["admin", "profiles"], env)
    assert down.returncode == 1
    assert down.stderr.startswith("token-broker admin: broker unreachable at ")
    assert len(down.stderr.strip().splitlines()) == 1
