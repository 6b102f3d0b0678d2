"""The broker YAML's shape: pydantic models and constrained types, no validation logic.

Imports nothing of ours but the scope-token and name rules (the name rule from the runner,
which checks ``--label`` by it), so ``upstream.providers`` can name these types without
importing the loader (which imports the providers).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.core.scopes import SCOPE_TOKEN_PATTERN
from service.runner.oauth2 import NAME_PATTERN

__all__ = [
    "NAME_PATTERN",
    "CallerSpec",
    "ClaimValue",
    "GrantSpec",
    "K8sName",
    "KeyHash",
    "KubernetesSpec",
    "Name",
    "ProfileSpec",
    "ScopeToken",
    "SigningKeySpec",
    "SigningSpec",
    "TrustedIssuerSpec",
    "WorkloadAlg",
    "WorkloadSpec",
]

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
# RFC 6749 section 3.3 scope-token.
ScopeToken = Annotated[str, StringConstraints(pattern=SCOPE_TOKEN_PATTERN)]
_DOMAIN = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileSpec(_Strict):
    """One OIDC client the broker exchanges credentials for, or (``broker``) tokens it signs."""

    provider: Literal["oidc", "onelogin", "broker"] = "oidc"
    issuer: str | None = None
    token_endpoint: str | None = None
    subdomain: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None
    region: Literal["us", "eu"] | None = None
    # Required by the exchanging providers (load.py says so); a broker profile has none.
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    client_secret: Any = None
    private_key: Any = None
    signing_alg: Literal["RS256", "PS256", "ES256"] = "RS256"
    key_id: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = (
        "client_secret_basic"
    )
    scopes: list[ScopeToken] = Field(default_factory=list)
    audience: str | None = None
    resource: str | None = None
    extra_params: dict[str, str] = Field(default_factory=dict)
    # Exchanges per minute across all replicas ("30/min", 30, or 0/off for none): what keeps a
    # loop of cache misses from getting the client throttled or locked out at the issuer.
    # YAML reads a bare off as false.
    issuer_budget: bool | int | str = "30/min"
    # Minted tokens only: ``email`` = principal@email_domain (OpenMetadata maps users by it).
    email_domain: Annotated[str, StringConstraints(pattern=_DOMAIN)] | None = None


class GrantSpec(_Strict):
    """A caller's right to a profile, optionally narrowed to some scopes."""

    profile: str
    scopes: list[ScopeToken] | None = None
    max_ttl: str | int | None = None
    # The one principal (OpenMetadata user) a broker profile's tokens name for this grant.
    principal: Name | None = None


class SigningKeySpec(_Strict):
    """One key the broker signs minted tokens with; its ``kid`` is in every token it signs."""

    kid: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    private_key: Any = None


class SigningSpec(_Strict):
    """The broker as an issuer: its URL and its keys, the first signing, all published."""

    issuer: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    keys: list[SigningKeySpec] = Field(min_length=1)


# Kubernetes object names (RFC 1123 subdomains / labels).
K8sName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")]
# Asymmetric algorithms only: an HMAC algorithm would let a public JWKS key act as a secret.
WorkloadAlg = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]
ClaimValue = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class TrustedIssuerSpec(_Strict):
    """An issuer of workload JWTs (a Kubernetes cluster, a CI system) trusted to name callers."""

    kind: Literal["kubernetes", "generic"] = "generic"
    issuer: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    audience: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    jwks_url: str | None = None
    jwks_file: str | None = None
    ca_file: str | None = None
    algorithms: list[WorkloadAlg] = Field(default=["RS256", "ES256"], min_length=1)
    leeway: str | int = 30
    required_claims: dict[Annotated[str, StringConstraints(max_length=128)], ClaimValue] = Field(
        default_factory=dict
    )
    # None: the kind decides. An RFC 7523 assertion is for one use, so a generic issuer's
    # tokens are refused the second time; a projected service-account token is a bearer
    # credential the kubelet hands out for reuse (pods present it until it is rotated at
    # about 80 % of its life), so a cluster's tokens may be presented again.
    replay: Literal["refuse", "allow"] | None = None
    require_jti: bool = True


class KubernetesSpec(_Strict):
    """Binds a caller to a Kubernetes service account, optionally to one pod name."""

    namespace: K8sName
    service_account: K8sName
    pod: K8sName | None = None
    issuer: Name | None = None


class WorkloadSpec(_Strict):
    """Binds a caller to the ``sub`` (and optionally other claims) of a trusted issuer's JWTs."""

    issuer: Name
    subject: ClaimValue
    claims: dict[Annotated[str, StringConstraints(max_length=128)], ClaimValue] = Field(
        default_factory=dict
    )


KeyHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class CallerSpec(_Strict):
    """Who may ask, how they prove it, and what they may get."""

    # One hash, or a list while a key is being rotated (the old and the new key both work).
    api_key_sha256: KeyHash | list[KeyHash] | None = None
    kubernetes: KubernetesSpec | None = None
    workload: WorkloadSpec | None = None
    roles: list[Literal["admin"]] = Field(default_factory=list)
    grants: list[GrantSpec] = Field(default_factory=list)
