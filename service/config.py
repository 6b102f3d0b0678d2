"""The broker YAML: profiles (OIDC clients), callers and their grants.

``load_config`` checks everything it can and raises one ``ConfigError`` listing every
problem, so an operator fixes a file in one pass. No message ever contains a secret: we
only ever name the field and the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from service.durations import parse_duration
from service.errors import ConfigError
from service.policy import GrantRule, Policy
from service.scopes import SCOPE_TOKEN_PATTERN
from service.upstream.base import Provider, url_problem
from service.upstream.providers import PROVIDERS

# Profile, caller and label names: also metric labels later, so short and plain.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
# RFC 6749 section 3.3 scope-token.
ScopeToken = Annotated[str, StringConstraints(pattern=SCOPE_TOKEN_PATTERN)]
M = TypeVar("M", bound=BaseModel)
_TOP_LEVEL = frozenset({"profiles", "callers", "trusted_issuers"})
MAX_LEEWAY_SECONDS = 300
_RESERVED_PARAMS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "scope",
        "audience",
        "resource",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileSpec(_Strict):
    """One OIDC client the broker exchanges credentials for."""

    provider: Literal["oidc", "onelogin"] = "oidc"
    issuer: str | None = None
    token_endpoint: str | None = None
    subdomain: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None
    region: Literal["us", "eu"] | None = None
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=512)]
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


class GrantSpec(_Strict):
    """A caller's right to a profile, optionally narrowed to some scopes."""

    profile: str
    scopes: list[ScopeToken] | None = None
    max_ttl: str | int | None = None


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


class SecretSource:
    """Where a secret lives; read on use so a rotated file is picked up without restart."""

    def __init__(
        self, *, file: Path | None = None, env: str | None = None, inline: str = ""
    ) -> None:
        self.file = file
        self.env = env
        self._inline = inline

    def describe(self) -> str:
        """Where the secret comes from, never what it is."""
        if self.file is not None:
            return f"file {self.file}"
        if self.env is not None:
            return f"env {self.env}"
        return "inline (development only)"

    def read(self) -> str:
        """The current secret; raises ``OSError`` / ``LookupError`` when it is unavailable."""
        if self.file is not None:
            value = self.file.read_text(encoding="utf-8").strip()
        elif self.env is not None:
            value = os.environ.get(self.env, "").strip()
        else:
            value = self._inline
        if not value:
            raise LookupError(f"secret from {self.describe()} is empty")
        return value

    def __repr__(self) -> str:
        return f"SecretSource({self.describe()})"


@dataclass(frozen=True)
class Profile:
    """A validated profile, ready for the upstream side."""

    name: str
    spec: ProfileSpec
    provider: Provider
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
                s.client_id,
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


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the YAML says, validated and indexed for request time."""

    profiles: Mapping[str, Profile]
    callers: Mapping[str, CallerSpec]
    policy: Policy
    api_keys: Mapping[str, str]  # hex SHA-256 of a whole key -> caller name
    trusted_issuers: Mapping[str, TrustedIssuer] = dataclasses.field(default_factory=dict)
    workloads: tuple[WorkloadBinding, ...] = ()


def load_config(path: Path, *, allow_inline_secrets: bool = False) -> BrokerConfig:
    """Read and validate the broker YAML; raise ``ConfigError`` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None
    return parse_config(raw, base_dir=path.parent, allow_inline_secrets=allow_inline_secrets)


def parse_config(
    raw: object, *, base_dir: Path = Path(), allow_inline_secrets: bool = False
) -> BrokerConfig:
    """Validate an already-parsed YAML document."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(["top level: must be a mapping with 'profiles' and 'callers'"])
    problems += [f"{key}: unknown key" for key in raw if key not in _TOP_LEVEL]
    profile_specs = _section(raw, "profiles", ProfileSpec, problems)
    caller_specs = _section(raw, "callers", CallerSpec, problems)
    issuer_specs = (
        _section(raw, "trusted_issuers", TrustedIssuerSpec, problems)
        if raw.get("trusted_issuers") is not None
        else {}
    )
    trusted = _trusted_issuers(issuer_specs, base_dir, problems)

    profiles: dict[str, Profile] = {}
    for name, spec in profile_specs.items():
        profile = _profile(name, spec, base_dir, allow_inline_secrets, problems)
        if profile is not None:
            profiles[name] = profile

    rules: dict[str, dict[str, GrantRule]] = {}
    api_keys: dict[str, str] = {}
    workloads: list[WorkloadBinding] = []
    for name, caller in caller_specs.items():
        where = f"callers.{name}"
        if caller.api_key_sha256 is None and caller.kubernetes is None and caller.workload is None:
            problems.append(f"{where}: needs a credential (api_key_sha256, kubernetes or workload)")
        hashes = caller.api_key_sha256
        for digest in [hashes] if isinstance(hashes, str) else hashes or []:
            other = api_keys.setdefault(digest, name)
            if other != name:
                problems.append(f"{where}.api_key_sha256: same key hash as caller '{other}'")
        if isinstance(hashes, list) and not hashes:
            problems.append(f"{where}.api_key_sha256: an empty list admits no key")
        workloads += _bindings(where, name, caller, issuer_specs, problems)
        rules[name] = _grants(where, caller, profile_specs, problems)
    _check_unique_bindings(workloads, problems)

    if problems:
        raise ConfigError(problems)
    return BrokerConfig(
        profiles=profiles,
        callers=caller_specs,
        policy=Policy(rules),
        api_keys=api_keys,
        trusted_issuers=trusted,
        workloads=tuple(workloads),
    )


def _section(raw: dict[Any, Any], key: str, model: type[M], problems: list[str]) -> dict[str, M]:
    section = raw.get(key)
    if section is None:
        problems.append(f"{key}: required")
        return {}
    if not isinstance(section, dict):
        problems.append(f"{key}: must be a mapping of name to settings")
        return {}
    out: dict[str, M] = {}
    for name, body in section.items():
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            problems.append(f"{key}.{name}: names use letters, digits, '.', '_', '-' (max 64)")
            continue
        try:
            out[name] = model.model_validate(body if body is not None else {})
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
            for err in errors:
                loc = ".".join(str(part) for part in err["loc"])
                problems.append(f"{key}.{name}{'.' + loc if loc else ''}: {err['msg']}")
            # Unknown keys alone must not hide the entry's other problems: check the rest too.
            if isinstance(body, dict) and all(e["type"] == "extra_forbidden" for e in errors):
                known = {k: v for k, v in body.items() if k in model.model_fields}
                with contextlib.suppress(ValidationError):
                    out[name] = model.model_validate(known)
    return out


def _profile(
    name: str, spec: ProfileSpec, base_dir: Path, allow_inline: bool, problems: list[str]
) -> Profile | None:
    where = f"profiles.{name}"
    before = len(problems)
    provider = PROVIDERS[spec.provider]
    problems += [f"{where}.{line}" for line in provider.problems(spec)]
    issuer = provider.issuer(spec)
    for field, url in (("issuer", issuer), ("token_endpoint", spec.token_endpoint)):
        reason = url_problem(url) if url else None
        if reason:
            problems.append(f"{where}.{field}: {reason}")
    problems += [
        f"{where}.extra_params.{key}: reserved; set it through its own field"
        for key in spec.extra_params
        if key in _RESERVED_PARAMS
    ]
    secret = key = None
    if spec.auth_method == "private_key_jwt":
        key = _secret_source(
            f"{where}.private_key", spec.private_key, base_dir, allow_inline, problems
        )
        if key is not None:
            _check_private_key(f"{where}.private_key", key, spec.signing_alg, problems)
        if spec.client_secret is not None:
            problems.append(f"{where}.client_secret: not used with private_key_jwt; remove it")
    else:
        secret = _secret_source(
            f"{where}.client_secret", spec.client_secret, base_dir, allow_inline, problems
        )
        if spec.private_key is not None:
            problems.append(f"{where}.private_key: only used with auth_method private_key_jwt")
    if len(problems) > before:
        return None
    return Profile(name, spec, provider, issuer, secret, key)


def _secret_source(  # noqa: PLR0911 - one early return per kind of problem
    where: str, ref: object, base_dir: Path, allow_inline: bool, problems: list[str]
) -> SecretSource | None:
    if ref is None:
        problems.append(f"{where}: required ({{file: PATH}} or {{env: NAME}})")
        return None
    if isinstance(ref, str):
        if not allow_inline:
            problems.append(
                f"{where}: inline secrets are refused; use {{file: PATH}} or {{env: NAME}} "
                "(TOKEN_BROKER_ALLOW_INLINE_SECRETS=true allows them for local development)"
            )
            return None
        source = SecretSource(inline=ref)
    elif isinstance(ref, dict) and set(ref) == {"file"} and isinstance(ref["file"], str):
        source = SecretSource(file=(base_dir / ref["file"]))
    elif isinstance(ref, dict) and set(ref) == {"env"} and isinstance(ref["env"], str):
        source = SecretSource(env=ref["env"])
    else:
        problems.append(f"{where}: must be {{file: PATH}} or {{env: NAME}}")
        return None
    try:
        source.read()
    except FileNotFoundError:
        problems.append(f"{where}: {source.describe()} does not exist")
        return None
    except OSError as exc:
        problems.append(f"{where}: {source.describe()} cannot be read ({exc.strerror})")
        return None
    except LookupError:
        problems.append(f"{where}: {source.describe()} is unset or empty")
        return None
    return source


def _check_private_key(where: str, source: SecretSource, alg: str, problems: list[str]) -> None:
    try:
        key = load_pem_private_key(source.read().encode(), password=None)
    except (ValueError, TypeError):
        problems.append(f"{where}: not an unencrypted PEM private key")
        return
    wants_ec = alg.startswith("ES")
    if wants_ec and not isinstance(key, ec.EllipticCurvePrivateKey):
        problems.append(f"{where}: signing_alg {alg} needs an EC key")
    elif not wants_ec and not isinstance(key, rsa.RSAPrivateKey):
        problems.append(f"{where}: signing_alg {alg} needs an RSA key")


def _grants(
    where: str, spec: CallerSpec, profiles: Mapping[str, ProfileSpec], problems: list[str]
) -> dict[str, GrantRule]:
    rules: dict[str, GrantRule] = {}
    for index, grant in enumerate(spec.grants):
        at = f"{where}.grants[{index}]"
        profile = profiles.get(grant.profile)
        if profile is None:
            problems.append(f"{at}.profile: unknown profile '{grant.profile}'")
            continue
        if grant.profile in rules:
            problems.append(f"{at}.profile: '{grant.profile}' is granted twice; merge the grants")
            continue
        scopes = frozenset(profile.scopes if grant.scopes is None else grant.scopes)
        outside = scopes - set(profile.scopes)
        if outside:
            problems.append(
                f"{at}.scopes: not in profile '{grant.profile}' scopes: {' '.join(sorted(outside))}"
            )
        max_ttl = None
        if grant.max_ttl is not None:
            try:
                max_ttl = parse_duration(grant.max_ttl)
            except ValueError as exc:
                problems.append(f"{at}.max_ttl: {exc}")
        rules[grant.profile] = GrantRule(
            profile=grant.profile,
            scopes=scopes,
            max_ttl=max_ttl,
            profile_scopes=frozenset(profile.scopes),
        )
    return rules


def _trusted_issuers(
    specs: Mapping[str, TrustedIssuerSpec], base_dir: Path, problems: list[str]
) -> dict[str, TrustedIssuer]:
    out: dict[str, TrustedIssuer] = {}
    by_url: dict[str, str] = {}
    for name, spec in specs.items():
        where = f"trusted_issuers.{name}"
        before = len(problems)
        issuer = spec.issuer.rstrip("/")
        other = by_url.setdefault(issuer, name)
        if other != name:
            problems.append(f"{where}.issuer: same issuer as trusted_issuers.{other}")
        for field_name, url in (("issuer", issuer), ("jwks_url", spec.jwks_url)):
            if url is not None and (reason := url_problem(url)):
                problems.append(f"{where}.{field_name}: {reason}")
        if spec.jwks_url is not None and spec.jwks_file is not None:
            problems.append(f"{where}: set jwks_url or jwks_file, not both")
        jwks_file = _existing_file(f"{where}.jwks_file", spec.jwks_file, base_dir, problems)
        ca_file = _existing_file(f"{where}.ca_file", spec.ca_file, base_dir, problems)
        leeway = _leeway(f"{where}.leeway", spec.leeway, problems)
        if len(problems) == before:
            out[name] = TrustedIssuer(
                name=name,
                kind=spec.kind,
                issuer=issuer,
                audience=spec.audience,
                jwks_url=spec.jwks_url,
                jwks_file=jwks_file,
                ca_file=ca_file,
                algorithms=tuple(dict.fromkeys(spec.algorithms)),
                leeway=leeway,
                required_claims=dict(spec.required_claims),
                replay=spec.replay or ("allow" if spec.kind == "kubernetes" else "refuse"),
                require_jti=spec.require_jti,
            )
    return out


def _existing_file(
    where: str, value: str | None, base_dir: Path, problems: list[str]
) -> Path | None:
    if value is None:
        return None
    path = base_dir / value
    if not path.is_file():
        problems.append(f"{where}: file {path} does not exist")
    return path


def _leeway(where: str, value: str | int, problems: list[str]) -> int:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return 0
    if seconds > MAX_LEEWAY_SECONDS:
        problems.append(f"{where}: at most {MAX_LEEWAY_SECONDS} seconds")
    return seconds


def _bindings(
    where: str,
    name: str,
    spec: CallerSpec,
    issuers: Mapping[str, TrustedIssuerSpec],
    problems: list[str],
) -> list[WorkloadBinding]:
    found: list[WorkloadBinding] = []
    if spec.kubernetes is not None:
        k8s = spec.kubernetes
        clusters = [n for n, i in issuers.items() if i.kind == "kubernetes"]
        issuer = k8s.issuer
        if issuer is None and len(clusters) == 1:
            issuer = clusters[0]
        if issuer is None:
            problems.append(
                f"{where}.kubernetes.issuer: "
                + (
                    "required: several trusted issuers have kind kubernetes"
                    if clusters
                    else "no trusted issuer of kind kubernetes is configured"
                )
            )
        elif issuer not in issuers or issuers[issuer].kind != "kubernetes":
            problems.append(
                f"{where}.kubernetes.issuer: '{issuer}' is not a trusted issuer of kind kubernetes"
            )
        else:
            claims = _service_account_claims(k8s.namespace, k8s.service_account)
            if k8s.pod is not None:
                claims["kubernetes.io", "pod", "name"] = k8s.pod
            subject = f"system:serviceaccount:{k8s.namespace}:{k8s.service_account}"
            found.append(WorkloadBinding(name, issuer, subject, claims))
    if spec.workload is not None:
        workload = spec.workload
        if workload.issuer not in issuers:
            problems.append(f"{where}.workload.issuer: unknown trusted issuer '{workload.issuer}'")
        else:
            claims = {(claim,): value for claim, value in workload.claims.items()}
            parts = workload.subject.split(":")
            if issuers[workload.issuer].kind == "kubernetes" and _is_service_account(parts):
                # A cluster's tokens carry the subject's namespace and account as claims too
                # (they must agree with sub), so a workload binding of a service account is
                # as specific as a kubernetes binding of it: say so, or the two would compare
                # by their written claims and the less specific one could win.
                claims |= _service_account_claims(parts[2], parts[3])
            found.append(WorkloadBinding(name, workload.issuer, workload.subject, claims))
    return found


def _is_service_account(parts: list[str]) -> bool:
    return len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]  # noqa: PLR2004


def _service_account_claims(namespace: str, account: str) -> dict[tuple[str, ...], str]:
    return {
        ("kubernetes.io", "namespace"): namespace,
        ("kubernetes.io", "serviceaccount", "name"): account,
    }


def _check_unique_bindings(bindings: list[WorkloadBinding], problems: list[str]) -> None:
    # One verified token must name one caller whatever the order of the YAML. Two bindings
    # of the same issuer and subject can both match a token unless some claim is required
    # with different values; that is allowed only when one's claims strictly contain the
    # other's, since the more specific binding then wins (a pod over its service account).
    groups: dict[tuple[str, str], list[WorkloadBinding]] = {}
    for binding in bindings:
        groups.setdefault((binding.issuer, binding.subject), []).append(binding)
    reported: set[tuple[str, str]] = set()
    for (issuer, subject), group in groups.items():
        for index, later in enumerate(group):
            for earlier in group[:index]:
                pair = (earlier.caller, later.caller)
                if earlier.caller == later.caller or pair in reported:
                    continue
                problem = _ambiguity(earlier, later)
                if problem is not None:
                    reported.add(pair)
                    problems.append(
                        f"callers.{later.caller}: {problem} caller '{earlier.caller}' "
                        f"(trusted issuer '{issuer}', subject '{subject}'); bind a claim that "
                        "tells them apart, or make one binding's claims contain the other's"
                    )


def _ambiguity(one: WorkloadBinding, other: WorkloadBinding) -> str | None:
    mine, theirs = set(one.claims.items()), set(other.claims.items())
    if mine == theirs:
        return "binds the same workload identity as"
    if mine < theirs or theirs < mine:
        return None
    if any(path in other.claims and other.claims[path] != v for path, v in one.claims.items()):
        return None  # no token can carry both values
    return "may match the same workload tokens (neither binding is more specific) as"
