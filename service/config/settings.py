"""Process settings from ``TOKEN_BROKER_*`` environment variables.

Built once at start-up by the CLI (or a test), never at import. Every secret also
accepts a ``*_FILE`` form so it can come from a mounted Kubernetes secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the broker process needs besides the broker YAML."""

    # hide_input_in_errors: a rejected value (a URL with a password, a mistyped secret) must
    # not be echoed into logs by the error's text.
    model_config = SettingsConfigDict(
        env_prefix="TOKEN_BROKER_", extra="ignore", hide_input_in_errors=True
    )

    config: Path = Field(default=Path("token-broker.yaml"), description="Path of the broker YAML.")
    redis_url: SecretStr | None = None
    redis_url_file: Path | None = None
    cache_keys: SecretStr | None = None
    cache_keys_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "INFO"
    # Inline client secrets in the YAML are for local development only.
    allow_inline_secrets: bool = False
    refresh_fraction: float = Field(default=2 / 3, gt=0, lt=1)
    max_skew_seconds: float = Field(default=30.0, ge=0)
    # The refresh lease is renewed while its holder works, so it can be short: a holder that
    # dies frees the key within one lease.
    lock_lease_seconds: float = Field(default=5.0, gt=0)
    # Replicas waiting on another's exchange wait out its whole retry deadline, and then some.
    wait_timeout_seconds: float = Field(default=30.0, gt=0)
    upstream_timeout_seconds: float = Field(default=10.0, gt=0)
    redis_timeout_seconds: float = Field(default=1.0, gt=0)
    # CA bundle for rediss:// (TLS) when Redis' certificate is not signed by a system CA.
    redis_ca_file: Path | None = None
    redis_max_connections: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=16_384, ge=256)
    # Trusted issuers' keys: refreshed this often, and refetched for an unknown kid at most
    # once per min interval, so made-up kids cannot make the broker hammer an issuer.
    jwks_max_age_seconds: float = Field(default=600.0, gt=0)
    jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    # Issuer trouble: retries with full-jitter backoff inside one deadline per exchange, and
    # a per-profile circuit breaker that fails fast while the issuer keeps failing.
    upstream_attempts: int = Field(default=4, ge=1, le=10)
    upstream_deadline_seconds: float = Field(default=20.0, gt=0)
    upstream_backoff_base_seconds: float = Field(default=0.2, gt=0)
    upstream_backoff_max_seconds: float = Field(default=5.0, gt=0)
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_reset_seconds: float = Field(default=30.0, gt=0)
    # Redis trouble: after a failure Redis is skipped (in-process cache and single-flight
    # only) and probed this often until it answers again.
    redis_probe_seconds: float = Field(default=2.0, gt=0)
    # Abuse: per-caller hand-outs per minute (shared through Redis; 0 disables), failed
    # authentications per client address per minute, and request header limits.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    auth_failures_per_minute: int = Field(default=30, ge=1)
    max_header_bytes: int = Field(default=8192, ge=1024)
    max_headers: int = Field(default=64, ge=8)
    # Proxies whose X-Forwarded-For is believed (service/api/middleware/proxies.py): comma-separated
    # CIDRs or addresses; empty = the TCP peer is the client, forwarded headers are ignored.
    # NoDecode: the variable is a plain comma list, not JSON; each entry is parsed below so a
    # typo fails the start instead of silently trusting nothing (or everything).
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    # The broker YAML and the cache keys file are checked this often and reloaded when their
    # content changes (also on SIGHUP); 0 turns the polling off.
    reload_seconds: float = Field(default=5.0, ge=0)
    # Benchmarks only: adds POST /bench/bare, the same request parsing and response size as
    # POST /v1/token with none of its work, to measure the broker against.
    bench_endpoints: bool = False
    # /docs and /redoc load their scripts from a public CDN, so on an air-gapped network they
    # are blank pages; off unless asked for. /openapi.json is served either way.
    docs: bool = False

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_trusted_proxies(cls, value: object) -> tuple[IPv4Network | IPv6Network, ...]:
        entries: Sequence[object]
        if isinstance(value, str):
            entries = value.split(",") if value.strip() else ()
        elif isinstance(value, list | tuple):
            entries = value
        else:
            raise PydanticCustomError(
                "trusted_proxies", "expected comma-separated CIDRs, e.g. 10.0.0.0/8,127.0.0.1"
            )
        networks: list[IPv4Network | IPv6Network] = []
        for position, entry in enumerate(entries, start=1):
            network = _network(entry)
            if network is None:
                # The entry itself is never echoed: this message ends up in logs.
                raise PydanticCustomError(
                    "trusted_proxies",
                    "entry {position} is not an IP address or CIDR (expected e.g. 10.0.0.0/8)",
                    {"position": position},
                )
            networks.append(network)
        return tuple(networks)

    @model_validator(mode="after")
    def _waiters_outlast_the_exchange(self) -> Self:
        if self.wait_timeout_seconds <= self.upstream_deadline_seconds:
            msg = (
                "TOKEN_BROKER_WAIT_TIMEOUT_SECONDS must exceed "
                "TOKEN_BROKER_UPSTREAM_DEADLINE_SECONDS: replicas waiting on another's exchange "
                "would give up while it is still retrying"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _read_secret_files(self) -> Self:
        for name in ("redis_url", "cache_keys"):
            path: Path | None = getattr(self, f"{name}_file")
            if path is not None and getattr(self, name) is None:
                try:
                    text = path.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    msg = f"TOKEN_BROKER_{name.upper()}_FILE: cannot read {path}: {exc.strerror}"
                    if name == "cache_keys":
                        msg += "; `token-broker new-cache-key > FILE` writes a fresh key"
                    raise ValueError(msg) from None
                setattr(self, name, SecretStr(text))
        return self


def _network(entry: object) -> IPv4Network | IPv6Network | None:
    """One TOKEN_BROKER_TRUSTED_PROXIES entry as a network (host bits dropped), or None."""
    if isinstance(entry, IPv4Network | IPv6Network):
        return entry
    if not isinstance(entry, str) or "%" in entry:  # IPv6 scope ids are free text
        return None
    try:
        return ip_network(entry.strip(), strict=False)
    except ValueError:
        return None
