"""Config validation of ``signing:`` keys, ``provider: broker`` profiles and grant principals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.config.load import DEFAULT_MINTED_MAX_TTL, parse_config
from service.errors import ConfigError

KEY = "tbk_x_" + "a" * 30


def _pem(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    """A 2048-bit RSA private key."""
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def document(tmp_path: Path, pem: bytes, **grant: Any) -> dict[str, Any]:
    """One broker profile granted to one caller, signing with ``pem``."""
    (tmp_path / "k.pem").write_bytes(pem)
    return {
        "signing": {
            "issuer": "https://broker.example.com",
            "keys": [{"kid": "k1", "private_key": {"file": "k.pem"}}],
        },
        "profiles": {"om": {"provider": "broker", "email_domain": "acme.com"}},
        "callers": {
            "airflow": {
                "api_key_sha256": "0" * 64,
                "grants": [{"profile": "om", "principal": "ingestion-airflow", **grant}],
            }
        },
    }


def problems(doc: dict[str, Any], tmp_path: Path) -> list[str]:
    """Every problem the loader lists for ``doc``."""
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, base_dir=tmp_path)
    return caught.value.problems


def test_a_broker_profile_loads_with_keys_and_a_12h_default_max_ttl(
    tmp_path: Path, rsa_pem: bytes
) -> None:
    """No client_id or secret needed; the grant's principal and a 12 h max_ttl reach policy."""
    config = parse_config(document(tmp_path, rsa_pem), base_dir=tmp_path)
    assert config.signing is not None
    assert [k.kid for k in config.signing.keys] == ["k1"]
    rule = config.policy.rule("airflow", "om")
    assert rule is not None
    assert rule.principal == "ingestion-airflow"
    assert rule.max_ttl == DEFAULT_MINTED_MAX_TTL == 12 * 3600


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (lambda: _pem(ec.generate_private_key(ec.SECP256R1())), "not a PEM RSA private key"),
        (lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "2048"),
        (lambda: b"an HMAC secret, which would make HS256", "not a PEM RSA private key"),
    ],
)
def test_non_rsa_or_short_keys_are_refused_without_quoting_them(
    tmp_path: Path, key: Any, reason: str
) -> None:
    """EC, 1024-bit RSA and shared secrets are refused: no config can make ES/HS256 or none."""
    pem = key()
    found = problems(document(tmp_path, pem), tmp_path)
    assert any(p.startswith("signing.keys[0].private_key:") and reason in p for p in found), found
    assert not any(pem.decode()[30:60] in p for p in found)


def test_signing_problems_are_listed_with_the_others(tmp_path: Path, rsa_pem: bytes) -> None:
    """Bad issuer URL, duplicate kid, missing key file and a broken caller: all in one pass."""
    doc = document(tmp_path, rsa_pem)
    doc["signing"]["issuer"] = "http://broker.example.com"
    doc["signing"]["keys"] += [
        {"kid": "k1", "private_key": {"file": "k.pem"}},
        {"kid": "k3", "private_key": {"file": "missing.pem"}},
    ]
    doc["callers"]["airflow"]["grants"][0]["max_ttl"] = "soon"
    found = problems(doc, tmp_path)
    assert any(p.startswith("signing.issuer: must use https://") for p in found), found
    assert any(p.startswith("signing.keys[1].kid: 'k1' is used twice") for p in found), found
    assert any(p.startswith("signing.keys[2].private_key: file") for p in found), found
    assert any(p.startswith("callers.airflow.grants[0].max_ttl") for p in found), found


def test_a_broker_profile_needs_signing_and_principals(tmp_path: Path, rsa_pem: bytes) -> None:
    """Without signing: the profile is refused; a grant without principal too."""
    doc = document(tmp_path, rsa_pem)
    del doc["signing"]
    del doc["callers"]["airflow"]["grants"][0]["principal"]
    found = problems(doc, tmp_path)
    assert "profiles.om.provider: 'broker' needs a top-level signing: section" in found
    assert any(p.startswith("callers.airflow.grants[0].principal: required") for p in found)


def test_exchange_settings_on_broker_profiles_and_principals_elsewhere_are_refused(
    tmp_path: Path, rsa_pem: bytes
) -> None:
    """client_id on a broker profile, email_domain or principal on an oidc one: refused."""
    doc = document(tmp_path, rsa_pem)
    doc["profiles"]["om"]["client_id"] = "x"
    doc["profiles"]["idp"] = {
        "issuer": "https://idp.example.com",
        "client_id": "c",
        "client_secret": {"env": "HOME"},
        "email_domain": "acme.com",
    }
    doc["callers"]["airflow"]["grants"].append({"profile": "idp", "principal": "p"})
    found = problems(doc, tmp_path)
    assert any(
        p.startswith("profiles.om.client_id: not used with provider 'broker'") for p in found
    )
    assert "profiles.idp.email_domain: only used with provider 'broker'" in found
    assert any(p.startswith("callers.airflow.grants[1].principal: only for broker") for p in found)


def test_an_oidc_profile_still_requires_client_id(tmp_path: Path, rsa_pem: bytes) -> None:
    """client_id became optional in the schema for broker profiles only."""
    doc = document(tmp_path, rsa_pem)
    doc["profiles"]["idp"] = {"issuer": "https://idp.example.com", "client_secret": {"env": "HOME"}}
    found = problems(doc, tmp_path)
    assert any(p.startswith("profiles.idp.client_id: required") for p in found), found
