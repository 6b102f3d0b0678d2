"""Broker-minted tokens in tests: signing keys on disk and a broker YAML that mints."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from joserfc.jwk import RSAKey

from tests.support.broker import BrokerFiles, new_key

__all__ = ["DOMAIN", "ISSUER", "new_signing_key", "rewrite_keys", "write_minted"]

ISSUER = "http://127.0.0.1:9999"
DOMAIN = "example.com"


def new_signing_key(directory: Path, kid: str) -> Path:
    """A 2048-bit RSA PEM on disk (tests favour speed; new-signing-key writes 3072 bits)."""
    path = directory / f"{kid}.pem"
    path.write_bytes(RSAKey.generate_key(2048, private=True).as_pem(private=True))
    return path


def write_minted(
    directory: Path, kids: list[str], *, max_ttl: str = "1h", key_files: dict[str, Path]
) -> BrokerFiles:
    """Profile ``om`` (provider broker) and callers airflow and dbt with their principals."""
    principals = {"airflow": "ingestion-airflow", "dbt": "ingestion-dbt"}
    keys = {caller: new_key(caller) for caller in principals}
    document: dict[str, Any] = {
        "signing": {
            "issuer": ISSUER,
            "keys": [{"kid": kid, "private_key": {"file": str(key_files[kid])}} for kid in kids],
        },
        "profiles": {
            "om": {
                "provider": "broker",
                "audience": "openmetadata",
                "email_domain": DOMAIN,
                "scopes": ["ingestion"],
            }
        },
        "callers": {
            caller: {
                "api_key_sha256": hashlib.sha256(keys[caller].encode()).hexdigest(),
                "grants": [{"profile": "om", "principal": principal, "max_ttl": max_ttl}],
            }
            for caller, principal in principals.items()
        },
    }
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump(document))
    return BrokerFiles(config=path, keys=keys)


def rewrite_keys(files: BrokerFiles, kids: list[str], key_files: dict[str, Path]) -> None:
    """The same YAML with ``signing.keys`` set to ``kids`` in that order."""
    document = yaml.safe_load(files.config.read_text())
    document["signing"]["keys"] = [
        {"kid": kid, "private_key": {"file": str(key_files[kid])}} for kid in kids
    ]
    files.config.write_text(yaml.safe_dump(document))
