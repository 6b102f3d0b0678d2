"""The broker YAML: profiles (OIDC clients), callers and their grants.

``load_config`` checks everything it can and raises one ``ConfigError`` listing every
problem, so an operator fixes a file in one pass. No message ever contains a secret: we
only ever name the field and the reason.

Long because every problem is reported at once: each check runs on whatever survived the
checks before it, and its wording lives beside it; the shapes are in ``schema``, the secrets
in ``secrets`` and the result types in ``validated``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from service.config.schema import (
    NAME_PATTERN,
    CallerSpec,
    GrantSpec,
    KubernetesSpec,
    ProfileSpec,
    SigningSpec,
    TrustedIssuerSpec,
    WorkloadSpec,
)
from service.config.secrets import SecretSource, check_private_key, secret_source
from service.config.validated import (
    BrokerConfig,
    Profile,
    Signing,
    TrustedIssuer,
    WorkloadBinding,
)
from service.core.policy import GrantRule, Policy
from service.durations import parse_duration
from service.errors import ConfigError
from service.upstream.minting import SigningKey, load_signing_key, public_jwks
from service.upstream.providers import PROVIDERS
from service.upstream.providers.base import url_problem

M = TypeVar("M", bound=BaseModel)
_TOP_LEVEL = frozenset({"profiles", "callers", "trusted_issuers", "signing"})
# A minted token outlives its hand-out by at most this unless the grant says otherwise:
# OpenMetadata cannot revoke it, so the default bounds what a leaked one is worth.
DEFAULT_MINTED_MAX_TTL = 12 * 3600
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


# -- problems in the broker's words --------------------------------------------------------
# pydantic's own messages name its types ("constrained-str", "Extra inputs are not
# permitted"); an operator needs the expected form. One table from pydantic's error type to
# our wording (formatted with the error's ctx, which holds limits, never the input), then a
# hint per field whose form is specific, which wins over the generic wording.
WORDING: Mapping[str, str] = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "model_type": "expected a mapping of settings",
    "model_attributes_type": "expected a mapping of settings",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "string_type": "expected text",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "literal_error": "expected {expected}",
    "string_pattern_mismatch": "not in the expected form",
    "string_too_short": "expected at least {min_length} character(s)",
    "string_too_long": "expected at most {max_length} character(s)",
    "too_short": "expected at least {min_length} item(s)",
    "too_long": "expected at most {max_length} item(s)",
    "greater_than": "expected more than {gt}",
    "greater_than_equal": "expected at least {ge}",
    "less_than": "expected less than {lt}",
    "less_than_equal": "expected at most {le}",
    "value_error": "{error}",
}


def wording(err: ErrorDetails, table: Mapping[str, str] = WORDING) -> str:
    """One pydantic error's reason in the broker's words (never the offending input)."""
    template = table.get(err["type"])
    if template is None:
        return err["msg"]
    try:
        return template.format_map(err.get("ctx") or {})
    except (KeyError, IndexError, ValueError):
        return err["msg"]


_DURATION = "a duration in seconds or with a unit (examples: 3600, 90m, 4h)"
_SCOPES = (
    "a list of scope tokens (printable ASCII without spaces, quotes or backslashes), "
    "e.g. [ingestion, read]"
)
_K8S_NAME = (
    "a Kubernetes name: lowercase letters, digits, '-' and '.', starting and ending with a "
    "letter or digit, e.g. ingestion"
)
_ISSUER_NAME = "the name of an entry under trusted_issuers, e.g. cluster"
_ISSUER_BUDGET = (
    "exchanges with the issuer per minute, shared by all replicas: e.g. 30/min or 30, "
    "or off (0) for no budget"
)
_CLAIMS = "a mapping of claim name to its exact text value, e.g. {repository_owner: acme}"


def _url(example: str) -> str:
    return f"an https URL (plain http only on loopback), e.g. {example}"


# {name} is the entry's own name (a profile or caller name the operator wrote).
_HINTS: Mapping[tuple[type[BaseModel], str], str] = {
    (ProfileSpec, "issuer"): _url("https://sso.example.com/realms/data"),
    (ProfileSpec, "token_endpoint"): _url("https://sso.example.com/oauth2/token"),
    (ProfileSpec, "subdomain"): (
        "the OneLogin subdomain: lowercase letters, digits and '-', e.g. acme for acme.onelogin.com"
    ),
    (ProfileSpec, "client_id"): "the client id registered at the issuer (1 to 512 characters)",
    (ProfileSpec, "scopes"): _SCOPES,
    (ProfileSpec, "issuer_budget"): _ISSUER_BUDGET,
    (ProfileSpec, "extra_params"): (
        "a mapping of form parameter to text, e.g. {organization: data}"
    ),
    (GrantSpec, "profile"): "the name of an entry under profiles, e.g. ingestion",
    (GrantSpec, "scopes"): _SCOPES,
    (GrantSpec, "max_ttl"): _DURATION,
    (TrustedIssuerSpec, "issuer"): _url("https://token.actions.githubusercontent.com"),
    (TrustedIssuerSpec, "audience"): (
        "the audience its tokens carry for the broker (1 to 512 characters), e.g. token-broker"
    ),
    (TrustedIssuerSpec, "jwks_url"): _url("https://kubernetes.example.com/openid/v1/jwks"),
    (TrustedIssuerSpec, "algorithms"): (
        "a list of asymmetric algorithms among RS256, RS384, RS512, PS256, PS384, PS512, "
        "ES256, ES384 (HMAC and none are refused), e.g. [RS256, ES256]"
    ),
    (TrustedIssuerSpec, "leeway"): f"{_DURATION}, at most {MAX_LEEWAY_SECONDS} seconds",
    (TrustedIssuerSpec, "required_claims"): _CLAIMS,
    (KubernetesSpec, "namespace"): _K8S_NAME,
    (KubernetesSpec, "service_account"): _K8S_NAME,
    (KubernetesSpec, "pod"): _K8S_NAME,
    (KubernetesSpec, "issuer"): _ISSUER_NAME,
    (WorkloadSpec, "issuer"): _ISSUER_NAME,
    (WorkloadSpec, "subject"): (
        "the exact sub of the workload's tokens (1 to 512 characters), "
        "e.g. repo:acme/data:ref:refs/heads/main"
    ),
    (WorkloadSpec, "claims"): _CLAIMS,
    (CallerSpec, "api_key_sha256"): (
        "the hex SHA-256 of an API key (64 characters 0-9a-f), or a list of them; "
        "`token-broker new-key --caller {name}` prints one"
    ),
    (CallerSpec, "kubernetes"): "{{namespace: NS, service_account: NAME}}, optionally pod, issuer",
    (CallerSpec, "workload"): "{{issuer: NAME, subject: SUB}}, optionally claims",
    (CallerSpec, "roles"): "a list of roles; the only role is admin",
    (CallerSpec, "grants"): "a list of grants, e.g. [{{profile: ingestion, max_ttl: 4h}}]",
}
# Where a union's branch or a dict key's check shows in pydantic's loc: not a field.
_NOT_A_FIELD = re.compile(
    r"\[key\]|constrained-str|str|int|bool|float|none"
    r"|(?:list|dict|literal|nullable|union|function-[a-z]+)\[.*\]"
)


@dataclass(frozen=True)
class _Spot:
    """Where in an entry a pydantic error points, in the YAML's own terms."""

    path: str  # ".kubernetes.namespace", "[0]" ...: the loc without pydantic's own parts
    field_path: str  # the path up to its deepest model field, "" for the entry itself
    field: tuple[type[BaseModel], str] | None  # that field and the model declaring it
    model: type[BaseModel] | None  # the model the last part of the path was looked up in


def _submodel(annotation: object) -> type[BaseModel] | None:
    """The model a field holds, through Optional and list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _submodel(arg)) is not None:
            return found
    return None


def _locate(model: type[BaseModel], loc: Iterable[int | str]) -> _Spot:
    path = field_path = ""
    field: tuple[type[BaseModel], str] | None = None
    current: type[BaseModel] | None = model
    looked_up_in: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        if _NOT_A_FIELD.fullmatch(part):
            continue
        path += f".{part}"
        looked_up_in = current
        if current is not None and part in current.model_fields:
            field, field_path = (current, part), path
            current = _submodel(current.model_fields[part].annotation)
        else:
            current = None  # a mapping's key: what lies below is no model of ours
    return _Spot(path, field_path, field, looked_up_in)


def explain(where: str, name: str, model: type[BaseModel], exc: ValidationError) -> list[str]:
    """The problems of one entry ``where`` (named ``name``), one line per field at most."""
    lines: dict[str, str] = {}  # by path: a union's failing branches make one line, not two
    for err in exc.errors(include_input=False, include_url=False):
        spot = _locate(model, err["loc"])
        hint = _HINTS.get(spot.field) if spot.field is not None else None
        hint = hint.format(name=name) if hint is not None else None
        if err["type"] == "extra_forbidden":
            key, reason = spot.path, "unknown key" + _did_you_mean(spot, err["loc"])
        elif err["type"] == "missing":
            key, reason = spot.path, f"required: {hint}" if hint else "required"
        elif hint is not None:
            key, reason = spot.field_path, f"expected {hint}"
        else:
            key, reason = spot.path, wording(err)
        lines.setdefault(key, f"{where}{key}: {reason}")
    return list(lines.values())


def _did_you_mean(spot: _Spot, loc: tuple[int | str, ...]) -> str:
    # The unknown key is the operator's own YAML key, not a value: naming it is safe.
    if spot.model is None or not loc or not isinstance(loc[-1], str):
        return ""
    known = list(spot.model.model_fields)
    return _close_to(loc[-1], known) or "; known keys: " + ", ".join(known)


def load_config(path: Path, *, allow_inline_secrets: bool = False) -> BrokerConfig:
    """Read and validate the broker YAML; raise ``ConfigError`` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: {_yaml_problem(exc)}"]) from None
    return parse_config(raw, base_dir=path.parent, allow_inline_secrets=allow_inline_secrets)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # Position and the parser's reason only: the offending text (the parser's snippet) may
    # be part of a secret pasted into the file.
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return "not valid YAML"
    mark = exc.problem_mark
    reason = f": {exc.problem}" if exc.problem else ""
    return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}{reason}"


def parse_config(
    raw: object, *, base_dir: Path = Path(), allow_inline_secrets: bool = False
) -> BrokerConfig:
    """Validate an already-parsed YAML document."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(["top level: must be a mapping with 'profiles' and 'callers'"])
    problems += [
        f"{key}: unknown key{_close_to(key, _TOP_LEVEL)}" for key in raw if key not in _TOP_LEVEL
    ]
    profile_section = _section(raw, "profiles", ProfileSpec, problems)
    caller_section = _section(raw, "callers", CallerSpec, problems)
    issuer_section = (
        _section(raw, "trusted_issuers", TrustedIssuerSpec, problems)
        if raw.get("trusted_issuers") is not None
        else Section[TrustedIssuerSpec]()
    )
    trusted = _trusted_issuers(issuer_section, base_dir, problems)
    signing = _signing(raw.get("signing"), base_dir, allow_inline_secrets, problems)
    _check_signed_profiles(profile_section, "signing" in raw, problems)

    profiles: dict[str, Profile] = {}
    for name, spec in profile_section.specs.items():
        broken = profile_section.broken.get(name, frozenset())
        profile = _profile(
            name, spec, broken, problems, base_dir=base_dir, allow_inline=allow_inline_secrets
        )
        if profile is not None:
            profiles[name] = profile

    rules: dict[str, dict[str, GrantRule]] = {}
    api_keys: dict[str, str] = {}
    workloads: list[WorkloadBinding] = []
    caller_specs = caller_section.specs
    for name, caller in caller_specs.items():
        where = f"callers.{name}"
        broken = caller_section.broken.get(name, frozenset())
        if (
            caller.api_key_sha256 is None
            and caller.kubernetes is None
            and caller.workload is None
            and not broken & _CREDENTIALS
        ):
            problems.append(f"{where}: needs a credential (api_key_sha256, kubernetes or workload)")
        hashes = caller.api_key_sha256
        for digest in [hashes] if isinstance(hashes, str) else hashes or []:
            other = api_keys.setdefault(digest, name)
            if other != name:
                problems.append(f"{where}.api_key_sha256: same key hash as caller '{other}'")
        if isinstance(hashes, list) and not hashes:
            problems.append(f"{where}.api_key_sha256: an empty list admits no key")
        workloads += _bindings(where, name, caller, issuer_section, problems)
        rules[name] = _grants(where, caller, profile_section, problems)
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
        signing=signing,
    )


@dataclass
class Section(Generic[M]):
    """One section's entries: what validated, and what failed where."""

    # Validated entries, and broken ones salvaged with their failing fields at the default
    # (those fields are already reported), so the checks that follow still run on the rest.
    specs: dict[str, M] = dataclasses.field(default_factory=dict)
    # Entry name -> its fields that failed validation. Every entry with a valid name is here
    # or in specs, so a grant naming a broken profile does not call it unknown.
    broken: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.specs or name in self.broken


_CREDENTIALS = frozenset({"api_key_sha256", "kubernetes", "workload"})


def _close_to(key: object, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


def _section(raw: dict[Any, Any], key: str, model: type[M], problems: list[str]) -> Section[M]:
    out = Section[M]()
    section = raw.get(key)
    if section is None:
        problems.append(f"{key}: required")
        return out
    if not isinstance(section, dict):
        problems.append(f"{key}: must be a mapping of name to settings, e.g. {{ingestion: ...}}")
        return out
    for name, body in section.items():
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            problems.append(
                f"{key}.{name}: names use letters, digits, '.', '_', '-' (max 64), e.g. ingestion"
            )
            continue
        try:
            out.specs[name] = model.model_validate(body if body is not None else {})
        except ValidationError as exc:
            problems += explain(f"{key}.{name}", name, model, exc)
            failed = {e["loc"][0] for e in exc.errors() if e["loc"]} & set(model.model_fields)
            out.broken[name] = frozenset(str(field) for field in failed)
            # The rest of the entry is still checked: one typo must not hide other problems.
            if isinstance(body, dict):
                rest = {k: v for k, v in body.items() if k in model.model_fields}
                rest = {k: v for k, v in rest.items() if k not in failed}
                with contextlib.suppress(ValidationError):
                    out.specs[name] = model.model_validate(rest)
    return out


_PER_MINUTE = re.compile(r"(\d+)\s*/\s*(?:min|minute)")


def parse_issuer_budget(value: bool | int | str) -> int:
    """A profile's ``issuer_budget`` as exchanges per minute, 0 for none; ``ValueError`` if bad."""
    if isinstance(value, bool):
        if value:
            raise ValueError(value)  # `on` or `true`: a budget needs a number
        return 0
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    text = value.strip().lower()
    if text == "off":
        return 0
    if text.isdigit():
        return int(text)
    if (match := _PER_MINUTE.fullmatch(text)) is None:
        raise ValueError(value)
    return int(match.group(1))


def _profile(
    name: str,
    spec: ProfileSpec,
    broken: frozenset[str],
    problems: list[str],
    *,
    base_dir: Path,
    allow_inline: bool,
) -> Profile | None:
    where = f"profiles.{name}"
    found: list[str] = []
    provider = PROVIDERS[spec.provider]
    if "provider" not in broken:
        found += [f"{where}.{line}" for line in provider.problems(spec)]
    issuer = provider.issuer(spec)
    for field, url in (("issuer", issuer), ("token_endpoint", spec.token_endpoint)):
        reason = url_problem(url) if url else None
        if reason:
            found.append(f"{where}.{field}: {reason}")
    found += [
        f"{where}.extra_params.{key}: reserved; set it through its own field"
        for key in spec.extra_params
        if key in _RESERVED_PARAMS
    ]
    try:
        parse_issuer_budget(spec.issuer_budget)
    except ValueError:
        found.append(f"{where}.issuer_budget: expected {_ISSUER_BUDGET}")
    secret = key = None
    if spec.provider != "broker":
        if spec.client_id is None and "client_id" not in broken:
            found.append(f"{where}.client_id: required: {_HINTS[ProfileSpec, 'client_id']}")
        if spec.email_domain is not None:
            found.append(f"{where}.email_domain: only used with provider 'broker'")
        secret, key = _credentials(
            where, spec, broken, found, base_dir=base_dir, allow_inline=allow_inline
        )
    # A broken field stands at its default here; what that default would say about it, or
    # about fields it decides (which secret auth_method needs), is no news to the operator.
    problems += [
        line
        for line in found
        if not any(line.startswith((f"{where}.{f}:", f"{where}.{f}.")) for f in broken)
    ]
    if found or broken:
        return None
    return Profile(name, spec, provider, issuer, secret, key)


def _credentials(
    where: str,
    spec: ProfileSpec,
    broken: frozenset[str],
    problems: list[str],
    *,
    base_dir: Path,
    allow_inline: bool,
) -> tuple[SecretSource | None, SecretSource | None]:
    """The client secret and private key the profile's auth_method needs."""
    secret = key = None
    if "auth_method" in broken:
        # Which secret the profile needs is unknown: check whichever is there, demand none.
        if spec.client_secret is not None:
            secret = secret_source(
                f"{where}.client_secret", spec.client_secret, base_dir, allow_inline, problems
            )
        if spec.private_key is not None:
            key = secret_source(
                f"{where}.private_key", spec.private_key, base_dir, allow_inline, problems
            )
    elif spec.auth_method == "private_key_jwt":
        key = secret_source(
            f"{where}.private_key", spec.private_key, base_dir, allow_inline, problems
        )
        if key is not None and "signing_alg" not in broken:
            check_private_key(f"{where}.private_key", key, spec.signing_alg, problems)
        if spec.client_secret is not None:
            problems.append(f"{where}.client_secret: not used with private_key_jwt; remove it")
    else:
        secret = secret_source(
            f"{where}.client_secret", spec.client_secret, base_dir, allow_inline, problems
        )
        if spec.private_key is not None:
            problems.append(f"{where}.private_key: only used with auth_method private_key_jwt")
    return secret, key


def _grants(
    where: str, spec: CallerSpec, profiles: Section[ProfileSpec], problems: list[str]
) -> dict[str, GrantRule]:
    rules: dict[str, GrantRule] = {}
    for index, grant in enumerate(spec.grants):
        at = f"{where}.grants[{index}]"
        if grant.profile not in profiles:
            problems.append(f"{at}.profile: unknown profile '{grant.profile}'")
            continue
        if grant.profile in rules:
            problems.append(f"{at}.profile: '{grant.profile}' is granted twice; merge the grants")
            continue
        profile = profiles.specs.get(grant.profile)
        # A broken profile's scopes are unknown (already reported): nothing to compare with.
        known = profile is not None and "scopes" not in profiles.broken.get(grant.profile, ())
        profile_scopes = frozenset(profile.scopes if profile is not None else ())
        scopes = frozenset(profile_scopes if grant.scopes is None else grant.scopes)
        outside = scopes - profile_scopes
        if outside and known:
            problems.append(
                f"{at}.scopes: not in profile '{grant.profile}' scopes: {' '.join(sorted(outside))}"
            )
        minted = profile is not None and profile.provider == "broker"
        max_ttl = DEFAULT_MINTED_MAX_TTL if minted else None
        if grant.max_ttl is not None:
            try:
                max_ttl = parse_duration(grant.max_ttl)
            except ValueError as exc:
                problems.append(f"{at}.max_ttl: {exc}")
        if minted and grant.principal is None:
            problems.append(
                f"{at}.principal: required for a grant of broker profile '{grant.profile}': "
                "the OpenMetadata user its tokens name, e.g. ingestion-airflow"
            )
        elif not minted and profile is not None and grant.principal is not None:
            problems.append(
                f"{at}.principal: only for broker profiles; '{grant.profile}' tokens come "
                "from its issuer, which names the principal"
            )
        rules[grant.profile] = GrantRule(
            profile=grant.profile,
            scopes=scopes,
            max_ttl=max_ttl,
            profile_scopes=profile_scopes,
            principal=grant.principal if minted else None,
        )
    return rules


def _check_signed_profiles(
    section: Section[ProfileSpec], has_signing: bool, problems: list[str]
) -> None:
    if not has_signing:
        problems += [
            f"profiles.{name}.provider: 'broker' needs a top-level signing: section"
            for name, spec in section.specs.items()
            if spec.provider == "broker"
        ]


def _signing(
    raw: object, base_dir: Path, allow_inline: bool, problems: list[str]
) -> Signing | None:
    """The broker's own signing keys, each read and checked now (never quoted)."""
    if raw is None:
        return None
    try:
        spec = SigningSpec.model_validate(raw)
    except ValidationError as exc:
        problems += explain("signing", "signing", SigningSpec, exc)
        return None
    before = len(problems)
    issuer = spec.issuer.rstrip("/")
    if reason := url_problem(issuer):
        problems.append(f"signing.issuer: {reason}")
    keys: list[SigningKey] = []
    kids: set[str] = set()
    for index, entry in enumerate(spec.keys):
        where = f"signing.keys[{index}]"
        if entry.kid in kids:
            problems.append(f"{where}.kid: '{entry.kid}' is used twice; every kid must differ")
        kids.add(entry.kid)
        source = secret_source(
            f"{where}.private_key", entry.private_key, base_dir, allow_inline, problems
        )
        if source is None:
            continue
        try:
            keys.append(load_signing_key(source.read(), entry.kid))
        except (OSError, LookupError, ValueError) as exc:
            # load_signing_key's messages never quote the PEM; the others name the source.
            problems.append(f"{where}.private_key: {exc}")
    if len(problems) != before:
        return None
    document = {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    return Signing(
        issuer=issuer,
        keys=tuple(keys),
        jwks=json.dumps(public_jwks(keys)).encode(),
        openid_configuration=json.dumps(document).encode(),
    )


def _trusted_issuers(
    section: Section[TrustedIssuerSpec], base_dir: Path, problems: list[str]
) -> dict[str, TrustedIssuer]:
    out: dict[str, TrustedIssuer] = {}
    by_url: dict[str, str] = {}
    for name, spec in section.specs.items():
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
        if len(problems) == before and name not in section.broken:
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
    section: Section[TrustedIssuerSpec],
    problems: list[str],
) -> list[WorkloadBinding]:
    found: list[WorkloadBinding] = []
    # An issuer whose kind is broken (or that could not be salvaged at all) is already
    # reported; bindings that name it, or might have meant it, are not checked against it.
    issuers = {n: i for n, i in section.specs.items() if "kind" not in section.broken.get(n, ())}
    unsure = {n for n in section.broken if n not in issuers}
    if spec.kubernetes is not None:
        found += _kubernetes_binding(where, name, spec.kubernetes, unsure, issuers, problems)
    if spec.workload is not None:
        workload = spec.workload
        if workload.issuer in unsure:
            pass
        elif workload.issuer not in issuers:
            problems.append(f"{where}.workload.issuer: unknown trusted issuer '{workload.issuer}'")
        else:
            claims: dict[tuple[str, ...], str] = {
                (claim,): value for claim, value in workload.claims.items()
            }
            parts = workload.subject.split(":")
            if issuers[workload.issuer].kind == "kubernetes" and _is_service_account(parts):
                # A cluster's tokens carry the subject's namespace and account as claims too
                # (they must agree with sub), so a workload binding of a service account is
                # as specific as a kubernetes binding of it: say so, or the two would compare
                # by their written claims and the less specific one could win.
                claims |= _service_account_claims(parts[2], parts[3])
            found.append(WorkloadBinding(name, workload.issuer, workload.subject, claims))
    return found


def _kubernetes_binding(  # noqa: PLR0917 - one caller, all of them needed
    where: str,
    name: str,
    k8s: KubernetesSpec,
    unsure: set[str],
    issuers: Mapping[str, TrustedIssuerSpec],
    problems: list[str],
) -> list[WorkloadBinding]:
    clusters = [n for n, i in issuers.items() if i.kind == "kubernetes"]
    issuer = k8s.issuer
    if issuer is None and len(clusters) == 1 and not unsure:
        issuer = clusters[0]
    if issuer in unsure or (issuer is None and unsure and len(clusters) < 2):  # noqa: PLR2004
        return []
    if issuer is None:
        problems.append(
            f"{where}.kubernetes.issuer: "
            + (
                "required: several trusted issuers have kind kubernetes"
                if clusters
                else "no trusted issuer of kind kubernetes is configured"
            )
        )
        return []
    if issuer not in issuers or issuers[issuer].kind != "kubernetes":
        problems.append(
            f"{where}.kubernetes.issuer: '{issuer}' is not a trusted issuer of kind kubernetes"
        )
        return []
    claims = _service_account_claims(k8s.namespace, k8s.service_account)
    if k8s.pod is not None:
        claims["kubernetes.io", "pod", "name"] = k8s.pod
    subject = f"system:serviceaccount:{k8s.namespace}:{k8s.service_account}"
    return [WorkloadBinding(name, issuer, subject, claims)]


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
