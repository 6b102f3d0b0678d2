"""What the loader hands out: validated profiles, trusted issuers and workload bindings.

Apart from the loader so that the upstream and callers sides can name these types without
importing it (the loader imports the upstream providers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from service.config.schema import CallerSpec, ProfileSpec
from service.config.secrets import SecretSource
from service.core.policy import Policy

if TYPE_CHECKING:
    from service.upstream.minting import SigningKey

__all__ = [
    "BrokerConfig",
    "Profile",
    "ProviderRules",
    "Signing",
    "TrustedIssuer",
    "WorkloadBinding",
]


class ProviderRules(Protocol):
    """What a profile needs of its provider; ``upstream.providers`` implements it."""

    name: str

    def issuer(self, spec: ProfileSpec) -> str | None:
        """The issuer URL whose discovery document names the token endpoint."""
        ...

    def problems(self, spec: ProfileSpec) -> list[str]:
        """What is missing or wrong for this provider, as ``field: reason`` lines."""
        ...

    def token_params(self, spec: ProfileSpec, scopes: tuple[str, ...]) -> dict[str, str]:
        """Form parameters of the exchange."""
        ...


@dataclass(frozen=True)
class Profile:
    """A validated profile, ready for the upstream side."""

    name: str
    spec: ProfileSpec
    provider: ProviderRules
    issuer: str | None
    client_secret: SecretSource | None
    private_key: SecretSource | None

    @property
    def identity(self) -> str:
        """What makes two profiles' tokens interchangeable; part of every cache key."""
        s = self.spec
        extras = "&".join(f"{k}={v}" for k, v in sorted(s.extra_params.items()))
        return "\n".join(
            [
                self.issuer or "",
                s.token_endpoint or "",
                s.client_id or "",
                s.audience or "",
                s.resource or "",
                extras,
            ]
        )


@dataclass(frozen=True)
class TrustedIssuer:
    """A validated trusted issuer of workload JWTs."""

    name: str
    kind: Literal["kubernetes", "generic"]
    issuer: str
    audience: str
    jwks_url: str | None
    jwks_file: Path | None
    ca_file: Path | None
    algorithms: tuple[str, ...]
    leeway: int
    required_claims: Mapping[str, str]
    # The safe side by default; the loader sets both from the YAML and the issuer's kind.
    replay: Literal["refuse", "allow"] = "refuse"
    require_jti: bool = True


@dataclass(frozen=True)
class WorkloadBinding:
    """Which verified workload JWTs authenticate as ``caller``.

    ``subject`` must equal the JWT's ``sub``; every ``claims`` entry must equal the claim at
    that path (a path of one name for a top-level claim; Kubernetes bindings reach into the
    ``kubernetes.io`` object, whose name holds a dot, hence tuples rather than dotted text).
    """

    caller: str
    issuer: str
    subject: str
    claims: Mapping[tuple[str, ...], str]


@dataclass(frozen=True, eq=False)
class Signing:
    """The broker as an issuer: keys read and checked, discovery documents serialised once."""

    issuer: str
    keys: tuple[SigningKey, ...]  # the first signs; all are published
    jwks: bytes  # GET /.well-known/jwks.json, public parts only
    openid_configuration: bytes  # GET /.well-known/openid-configuration

    def __repr__(self) -> str:
        return f"Signing(issuer={self.issuer!r}, kids={[k.kid for k in self.keys]!r})"


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the YAML says, validated and indexed for request time."""

    profiles: Mapping[str, Profile]
    callers: Mapping[str, CallerSpec]
    policy: Policy
    api_keys: Mapping[str, str]  # hex SHA-256 of a whole key -> caller name
    trusted_issuers: Mapping[str, TrustedIssuer] = dataclasses.field(default_factory=dict)
    workloads: tuple[WorkloadBinding, ...] = ()
    signing: Signing | None = None
