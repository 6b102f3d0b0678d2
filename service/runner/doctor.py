"""``doctor openmetadata``: does OpenMetadata accept the broker's token; if not, what to change.

Fetches a token exactly as ``token`` / ``exec`` do, then checks it against OpenMetadata's own
rules (openmetadata-service, ``security/JwtFilter``, ``SecurityUtil``, ``JwtIdentityResolver``,
``policyevaluator/SubjectCache``, ``DefaultAuthorizer``): a JWT with a ``kid`` that its
issuer publishes, long enough lived, a principal derived from the claims under the settings OM
publishes (``/v1/system/config/auth`` and ``/config/authorizer``). Then it asks OM itself
(``/v1/users/loggedInUser``, ``/v1/permissions``) and maps the answer to the setting to
change. What OM does not publish (``publicKeyUrls``, ``enforcePrincipalDomain``,
``emailClaim``) is inferred from that answer, and said to be inferred.

Pure parts (:func:`derive_principal`, :func:`interpret_login`, :func:`ingestion_checks`) take
decoded JSON and return checklist lines; :func:`run` does the I/O. The token is never printed.
Exit 0 exactly when OM accepts the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .client import ClientError, FetchedToken, https_opener

__all__ = [
    "INGESTION_OPERATIONS",
    "INGESTION_RESOURCES",
    "INGESTION_ROLE",
    "Check",
    "LoginContext",
    "Principal",
    "decode_jwt",
    "derive_principal",
    "ingestion_checks",
    "interpret_login",
    "remedy_for_401",
    "run",
]

INGESTION_ROLE = "IngestionBotRole"
INGESTION_POLICY = "IngestionBotPolicy"
# What a metadata workflow writes: it creates and edits these (Create, EditAll); a refusal is
# OM's 403 from `security/policyevaluator/PolicyEvaluator`.
INGESTION_RESOURCES = (
    "databaseService", "database", "databaseSchema", "table", "ingestionPipeline",
)  # fmt: skip
INGESTION_OPERATIONS = ("Create", "EditAll")
DEFAULT_PRINCIPAL_CLAIMS = ("email", "preferred_username", "sub")
_ALLOWED_ACCESS = frozenset({"allow", "conditionalAllow"})
_MAX_MESSAGE = 300
_MAX_ANSWER_BYTES = 1 << 20
_USER_NOT_FOUND = re.compile(r"user instance for (\S+) not found", re.IGNORECASE)
# Where each setting lives: openmetadata.yaml key, environment variable of OM's image.
PUBLIC_KEY_URLS = "authenticationConfiguration.publicKeyUrls (AUTHENTICATION_PUBLIC_KEYS)"
PRINCIPAL_CLAIMS = "authenticationConfiguration.jwtPrincipalClaims"
CLAIMS_MAPPING = "authenticationConfiguration.jwtPrincipalClaimsMapping"
EMAIL_CLAIM = "authenticationConfiguration.emailClaim"
PRINCIPAL_DOMAIN = "authorizerConfiguration.principalDomain (AUTHORIZER_PRINCIPAL_DOMAIN)"
ENFORCE_DOMAIN = (
    "authorizerConfiguration.enforcePrincipalDomain (AUTHORIZER_ENFORCE_PRINCIPAL_DOMAIN)"
)


@dataclass(frozen=True)
class Check:
    """One checklist line: ``ok``, ``FAIL`` or ``note``, and what it says."""

    status: str
    text: str

    def line(self) -> str:
        """The line as printed."""
        return f"{self.status:<4} {self.text}"


def _ok(text: str) -> Check:
    return Check("ok", text)


def _fail(text: str) -> Check:
    return Check("FAIL", text)


def _note(text: str) -> Check:
    return Check("note", text)


def _b64json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(value, dict):
        raise TypeError("not a JSON object")
    return value


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A JWT's header and claims (not verified), or None when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:  # noqa: PLR2004
        return None
    try:
        return _b64json(parts[0]), _b64json(parts[1])
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        return None


def _claim(claims: Mapping[str, Any], name: str | None) -> str:
    """``SecurityUtil.getClaimOrObject`` on a case-insensitive map: the string, else ""."""
    if not name:
        return ""
    value = claims.get(name.lower())
    return value if isinstance(value, str) else ""


def _names(values: Sequence[str]) -> str:
    return "[" + ", ".join(values) + "]"


@dataclass(frozen=True)
class Principal:
    """Who OM will say the token is, from the published settings (legacy claim rules).

    ``problem`` says why OM will refuse it (with the setting to change); ``domain`` is the
    domain the claim itself carries ("" for a bare name such as a client id).
    """

    name: str
    email: str
    claim: str
    setting: str
    domain: str
    problem: str = ""


def _mapping(auth_config: Mapping[str, Any]) -> dict[str, str]:
    """``SecurityUtil.buildPrincipalClaimsMapping``: "name:claim" entries with one colon."""
    pairs = (str(entry).split(":") for entry in auth_config.get("jwtPrincipalClaimsMapping") or ())
    return {parts[0]: parts[1] for parts in pairs if len(parts) == 2}  # noqa: PLR2004


def derive_principal(
    raw_claims: Mapping[str, Any], auth_config: Mapping[str, Any], principal_domain: str
) -> Principal:
    """The principal OM derives (``SecurityUtil.findUserNameFromClaims`` / ``findEmailFromClaims``).

    ``auth_config`` is ``/v1/system/config/auth``, ``principal_domain`` from
    ``/config/authorizer``. Claim names match case-insensitively (``JwtFilter``).
    """
    claims = {str(k).lower(): v for k, v in raw_claims.items()}
    present = ", ".join(sorted(raw_claims)) or "none"
    mapping = _mapping(auth_config)
    bot = claims.get("isbot") is True
    if mapping and not bot:
        name_claim, email_claim = mapping.get("username", ""), mapping.get("email", "")
        setting = f"{CLAIMS_MAPPING} {_names(list(auth_config['jwtPrincipalClaimsMapping']))}"
        raw_name, raw_email = _claim(claims, name_claim), _claim(claims, email_claim)
        problem = ""
        if not raw_name:
            problem = (
                f"the token has no '{name_claim}' claim, which {CLAIMS_MAPPING} maps to username"
                f" (claims: {present}): add it at the IdP, or change the mapping"
            )
        elif "@" not in raw_email:
            problem = (
                f"{CLAIMS_MAPPING} maps email to claim '{email_claim}', which the token "
                f"{'has without an @' if raw_email else 'does not carry'}: OM refuses it "
                f"(401). Add an email-shaped claim '{email_claim}' at the IdP, or remove "
                f"{CLAIMS_MAPPING} so that {PRINCIPAL_CLAIMS} apply"
            )
        domain = raw_email.split("@", 1)[1] if "@" in raw_email else ""
        return Principal(
            name=raw_name.split("@")[0].lower(),
            email=raw_email.lower(),
            claim=name_claim,
            setting=setting,
            domain=domain,
            problem=problem,
        )
    claim_names = [str(c) for c in auth_config.get("jwtPrincipalClaims") or ()]
    setting = f"{PRINCIPAL_CLAIMS} {_names(claim_names)}"
    found = next((c for c in claim_names if c.lower() in claims), None)
    if found is None:
        problem = (
            f"none of {PRINCIPAL_CLAIMS} {_names(claim_names)} is in the token (claims: "
            f"{present}): add 'sub' to {PRINCIPAL_CLAIMS}, or the claim at the IdP"
        )
        return Principal("", "", "", setting, "", problem)
    raw = _claim(claims, found)
    problem = ""
    if "@" in raw:
        email = raw
    elif principal_domain:
        email = f"{raw}@{principal_domain}"
    else:
        email = ""
        problem = (
            f"claim '{found}' = '{raw}' is not an email and {PRINCIPAL_DOMAIN} is empty: "
            "set principalDomain"
        )
    if str(claims.get("email_verified")).lower() == "false":
        problem = (
            "the token says email_verified: false, which OM refuses (401): mark the email "
            "verified at the IdP, or drop the claim"
        )
    return Principal(
        name=raw.split("@")[0].lower(),
        email=email.lower(),
        claim=found,
        setting=setting,
        domain=raw.split("@", 1)[1] if "@" in raw else "",
        problem=problem,
    )


@dataclass(frozen=True)
class LoginContext:
    """What doctor knows when it reads OM's answer to ``GET /v1/users/loggedInUser``."""

    principal: Principal
    principal_domain: str
    kid: str
    jwks_url: str  # the JWKS holding the token's key ("" when none was found)


def _user_remedy(name: str, ctx: LoginContext) -> str:
    domain = ctx.principal_domain or "<principalDomain>"
    email = ctx.principal.email if "@" in ctx.principal.email else f"{name}@{domain}"
    return (
        f"create the user '{name}' in OM (Settings > Users > Add User, or PUT /api/v1/users) "
        f"with email {email} and the role {INGESTION_ROLE}"
    )


def _no_header(_: LoginContext) -> str:
    return (
        "OM received no bearer token: a proxy or ingress in front of OM drops the "
        "Authorization header; let it through"
    )


def _expired(_: LoginContext) -> str:
    return (
        "the token had expired when OM read it: check the clocks, and ask for a longer "
        "--min-ttl (the profile's max_ttl / the IdP's access-token lifetime)"
    )


def _jwks(ctx: LoginContext) -> str:
    return ctx.jwks_url or "the IdP's JWKS URL (its discovery document's jwks_uri)"


def _unknown_kid(ctx: LoginContext) -> str:
    return (
        f"OM finds no key with kid '{ctx.kid}' (inferred: {PUBLIC_KEY_URLS} does not list "
        f"the issuer's JWKS): add {_jwks(ctx)} to publicKeyUrls and restart OM"
    )


def _mismatch(ctx: LoginContext) -> str:
    return (
        f"the signature does not verify with the key OM found for kid '{ctx.kid}' "
        f"(inferred: {PUBLIC_KEY_URLS} lists a stale or another JWKS): list {_jwks(ctx)}"
    )


def _mapped(ctx: LoginContext) -> str:
    return ctx.principal.problem or (
        f"{CLAIMS_MAPPING} names a claim the token lacks: add it at the IdP or remove the mapping"
    )


def _no_claim(_: LoginContext) -> str:
    return f"{PRINCIPAL_CLAIMS} names no claim the token has: add 'sub' to jwtPrincipalClaims"


def _email_first(ctx: LoginContext) -> str:
    return (
        f"OM resolves users by email (inferred: {EMAIL_CLAIM} is set) and the token has "
        "no email-shaped claim of that name: add one at the IdP (e.g. "
        f"ingestion@{ctx.principal_domain or 'example.com'}), or make {PRINCIPAL_CLAIMS} "
        "non-empty (e.g. [email, preferred_username, sub]) so that OM falls back to it"
    )


def _unverified(_: LoginContext) -> str:
    return "the token says email_verified: false: mark the email verified at the IdP"


def _domain(ctx: LoginContext) -> str:
    principal = ctx.principal
    carried = f"domain '{principal.domain}'" if principal.domain else "no domain"
    return (
        f"OM enforces the principal domain (inferred: {ENFORCE_DOMAIN} is true) and the "
        f"token's claim '{principal.claim or '?'}' carries {carried}: set "
        "enforcePrincipalDomain: false, or add an email claim "
        f"<name>@{ctx.principal_domain or '<principalDomain>'} at the IdP and list it first in "
        f"{PRINCIPAL_CLAIMS}"
    )


def _other_email(ctx: LoginContext) -> str:
    return (
        f"OM resolves users by email (inferred: {EMAIL_CLAIM} is set) and the user of that "
        f"name has another email: set its email to {ctx.principal.email or 'the token'}"
    )


def _bot(_: LoginContext) -> str:
    return (
        "the token carries isBot: true, so OM compares it with the bot's stored token: "
        "remove the isBot claim at the IdP (an IdP token is never a bot token)"
    )


def _no_domain(_: LoginContext) -> str:
    return f"the principal is not an email and {PRINCIPAL_DOMAIN} is empty: set it"


def _not_jwt(_: LoginContext) -> str:
    return (
        "OM cannot read the token as a JWT: configure the IdP to issue JWT access tokens "
        "(docs/recipes/openmetadata-server.md)"
    )


# OM's 401 messages (``JwtFilter``, ``SecurityUtil``, ``JwtIdentityResolver``), first match
# wins, lower-cased fragments -> the remedy.
_REMEDIES: tuple[tuple[tuple[str, ...], Callable[[LoginContext], str]], ...] = (
    (("token not present",), _no_header),
    (("expired",), _expired),
    (("key not found", "no key found", "kid"), _unknown_kid),
    (("public key mismatch", "verification failed"), _mismatch),
    (("'email' claim", "'username' claim"), _mapped),
    (("none of the following claims",), _no_claim),
    (("email claim", "invalid email format"), _email_first),
    (("not verified",), _unverified),
    (("principal domain", "not in allowed list"), _domain),
    (("not registered",), _other_email),
    (("bot",), _bot),
    (("no domain is configured",), _no_domain),
    (("invalid token",), _not_jwt),
)


def remedy_for_401(message: str, ctx: LoginContext) -> str:
    """The setting OM's 401 ``message`` points at."""
    text = message.lower()
    for fragments, remedy in _REMEDIES:
        if any(fragment in text for fragment in fragments):
            return remedy(ctx)
    return "OM refused the token for a reason doctor does not know: read OM's message"


def interpret_login(status: int, body: Any, ctx: LoginContext) -> tuple[bool, list[Check]]:
    """Whether OM accepted the token, and the lines for its answer to ``loggedInUser``."""
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    quoted = f"'{message[:_MAX_MESSAGE]}'" if message else "(no message)"
    principal = ctx.principal
    if status == 200 and isinstance(body, dict):  # noqa: PLR2004
        name = str(body.get("name", ""))
        lines = [_ok(f"OM accepts the token: it is user '{name}' ({body.get('email', '')})")]
        if principal.name and name != principal.name:
            lines.append(
                _note(
                    f"OM resolved '{name}', not '{principal.name}' from the published claims "
                    f"(inferred: OM resolves users by email, {EMAIL_CLAIM})"
                )
            )
        elif principal.problem:
            lines.append(
                _note(
                    "OM accepted what the published settings predict it refuses (inferred: "
                    f"an unpublished setting such as {EMAIL_CLAIM} applies)"
                )
            )
        lines.append(_ok(f"the issuer's JWKS is in {PUBLIC_KEY_URLS} (inferred: OM found the key)"))
        if ctx.principal_domain and principal.domain.lower() != ctx.principal_domain.lower():
            lines.append(
                _note(
                    f"{ENFORCE_DOMAIN} is false (inferred: OM accepted a token whose claim "
                    f"carries no '{ctx.principal_domain}' domain); turning it on would refuse it"
                )
            )
        return True, lines
    if status == 401:  # noqa: PLR2004
        return False, [_fail(f"OM refuses the token: 401 {quoted}; {remedy_for_401(message, ctx)}")]
    if status == 404:  # noqa: PLR2004
        match = _USER_NOT_FOUND.search(message)
        name = match.group(1) if match else principal.name
        if match or name:
            return False, [
                _fail(
                    f"OM authenticates the token but knows no user '{name}': 404 {quoted}; "
                    f"{_user_remedy(name, ctx)}"
                )
            ]
        return False, [_fail(f"OM answered 404 {quoted}: is --server the workflow's hostPort?")]
    if status == 403:  # noqa: PLR2004
        return False, [
            _fail(f"OM refuses user '{principal.name}': 403 {quoted}; check its roles and policies")
        ]
    return False, [_fail(f"OM answered HTTP {status} {quoted} to GET /v1/users/loggedInUser")]


def _access(permissions: Any) -> dict[tuple[str, str], str]:
    """``(resource, operation) -> access`` from ``GET /v1/permissions`` (a ResultList)."""
    found: dict[tuple[str, str], str] = {}
    data = permissions.get("data") if isinstance(permissions, dict) else None
    for entry in data if isinstance(data, list) else ():
        if not isinstance(entry, dict):
            continue
        for item in entry.get("permissions") or ():
            if isinstance(item, dict):
                key = (str(entry.get("resource")), str(item.get("operation")))
                found[key] = str(item.get("access"))
    return found


def ingestion_checks(user: Mapping[str, Any], permissions: Any) -> list[Check]:
    """What ingestion may do as ``user`` (``loggedInUser``), and whether it is a bot."""
    name = str(user.get("name", ""))
    roles = [str(r.get("name")) for r in user.get("roles") or () if isinstance(r, dict)]
    access = _access(permissions)
    refused = [
        f"{operation} {resource}"
        for resource in INGESTION_RESOURCES
        for operation in INGESTION_OPERATIONS
        if access.get((resource, operation)) not in _ALLOWED_ACCESS
    ]
    wanted = f"{'/'.join(INGESTION_OPERATIONS)} on {', '.join(INGESTION_RESOURCES)}"
    lines: list[Check] = []
    if not access:
        lines.append(_note(f"OM listed no permissions for '{name}'; roles: {_names(roles)}"))
    elif refused:
        lines.append(
            _fail(
                f"OM would refuse ingestion (403) for '{name}' (roles {_names(roles)}): "
                f"{', '.join(refused)}; give user '{name}' the role {INGESTION_ROLE} "
                f"(policy {INGESTION_POLICY}) in Settings > Users > {name} > Roles"
            )
        )
    else:
        lines.append(_ok(f"'{name}' may {wanted} (roles {_names(roles)})"))
    if user.get("isBot") is True:
        lines.append(
            _note(
                f"'{name}' is a bot user: OM shows it service-connection secrets unmasked "
                "(DefaultAuthorizer.shouldMaskPasswords), so every holder of this profile's "
                "tokens can read them"
            )
        )
    else:
        lines.append(
            _note(
                f"'{name}' is not a bot: OM masks service-connection secrets for it "
                "(DefaultAuthorizer.shouldMaskPasswords), so the workflow must carry its "
                "source connection in its own YAML; one relying on the connection stored in "
                "OM fails"
            )
        )
    return lines


# --- I/O ---


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status (None when unreachable), JSON body (None when not JSON), error."""

    status: int | None
    body: Any
    error: str = ""


def get_json(url: str, token: str | None = None, timeout: float = 10.0) -> Answer:
    """``GET url`` (bounded, TLS verified with TOKEN_BROKER_CA_FILE, no redirects)."""
    if urlsplit(url).scheme not in {"http", "https"}:
        return Answer(None, None, "not an http:// or https:// URL")
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (scheme checked)
    try:
        opener = https_opener()
        with opener.open(request, timeout=timeout) as response:
            status, content = response.status, response.read(_MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        with exc:
            status, content = exc.code, exc.read(_MAX_ANSWER_BYTES)
    except ClientError as exc:
        return Answer(None, None, str(exc))
    except urllib.error.URLError as exc:
        reason = exc.reason
        return Answer(None, None, reason if isinstance(reason, str) else type(reason).__name__)
    except (OSError, ValueError) as exc:
        return Answer(None, None, type(exc).__name__)
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    return Answer(status, body)


def _human(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:  # noqa: PLR2004
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:  # noqa: PLR2004
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _kids(document: Any) -> list[str]:
    keys = document.get("keys") if isinstance(document, dict) else None
    return [str(k.get("kid")) for k in keys or () if isinstance(k, dict)]


def _find_jwks(issuer: str, kid: str, broker_url: str, timeout: float) -> tuple[list[Check], str]:
    """Lines about where the token's key is published, and that JWKS URL ("" if none)."""
    candidates: list[str] = []
    broker = broker_url.rstrip("/")
    own = f"{broker}/.well-known/jwks.json"
    if issuer.rstrip("/") == broker:
        candidates.append(own)
    lines: list[Check] = []
    if issuer and urlsplit(issuer).scheme in {"http", "https"}:
        discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        discovery = get_json(discovery_url, timeout=timeout)
        jwks_uri = discovery.body.get("jwks_uri") if isinstance(discovery.body, dict) else None
        if discovery.status == 200 and isinstance(jwks_uri, str):  # noqa: PLR2004
            candidates.append(jwks_uri)
        else:
            lines.append(_note(f"no OIDC discovery at {discovery_url}"))
    if own not in candidates:
        candidates.append(own)  # a token the broker minted under another issuer name
    for url in candidates:
        if kid in _kids(get_json(url, timeout=timeout).body):
            lines.append(
                _ok(f"kid '{kid}' is published at {url}; {PUBLIC_KEY_URLS} must list this URL")
            )
            return lines, url
    lines.append(
        _fail(
            f"kid '{kid}' is not in the JWKS of issuer '{issuer}' (tried {', '.join(candidates)}):"
            " OM can only verify it if a publicKeyUrls JWKS has it; check the IdP's signing key"
        )
    )
    return lines, ""


@dataclass
class Options:
    """What ``doctor openmetadata`` was asked."""

    server: str
    broker_url: str
    min_ttl: int
    timeout: float


def _token_checks(token: str) -> tuple[list[Check], dict[str, Any], str]:
    """Lines about the token's shape; its claims and kid."""
    decoded = decode_jwt(token)
    if decoded is None:
        return (
            [
                _fail(
                    "the token is not a JWT (opaque): OM refuses it (401 'Invalid token.'); have "
                    "the IdP issue JWT access tokens for this client "
                    "(docs/recipes/openmetadata-server.md)"
                )
            ],
            {},
            "",
        )
    header, claims = decoded
    kid = str(header.get("kid") or "")
    if kid:
        return [_ok(f"the token is a JWT ({header.get('alg')}) with kid '{kid}'")], claims, kid
    return (
        [_fail("the token is a JWT without a kid: OM finds keys by kid; fix the IdP")],
        claims,
        "",
    )


def _life_check(claims: Mapping[str, Any], min_ttl: int) -> list[Check]:
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return [_note("the token has no exp: OM accepts it until its key is rotated")]
    left = exp - time.time()
    if left >= min_ttl:
        return [_ok(f"it lives {_human(left)} more, covering --min-ttl {_human(min_ttl)}")]
    return [
        _fail(
            f"it lives {_human(max(left, 0))} more, less than --min-ttl {_human(min_ttl)}: raise "
            "the IdP's access-token lifetime (and the grant's max_ttl)"
        )
    ]


def _principal_checks(principal: Principal, domain: str) -> list[Check]:
    if principal.problem:
        lines = [_fail(f"principal: {principal.problem}")]
    else:
        lines = [
            _ok(
                f"principal: OM derives '{principal.name}' from claim '{principal.claim}' "
                f"(published {principal.setting}); its email is {principal.email}"
            )
        ]
    if domain and principal.domain.lower() == domain.lower():
        lines.append(_ok(f"the claim carries the published principalDomain '{domain}'"))
    elif domain:
        carried = f"domain '{principal.domain}'" if principal.domain else "no domain"
        lines.append(
            _note(
                f"the claim carries {carried}, not the published principalDomain '{domain}': "
                f"fine unless {ENFORCE_DOMAIN} is true (not published; see OM's answer)"
            )
        )
    return lines


def _published(api: str, timeout: float) -> tuple[dict[str, Any], str, list[Check]] | None:
    """OM's published claims settings and principalDomain; None when OM is unreachable."""
    auth = get_json(f"{api}/v1/system/config/auth", timeout=timeout)
    if auth.status is None:
        return None
    authorizer = get_json(f"{api}/v1/system/config/authorizer", timeout=timeout)
    lines: list[Check] = []
    auth_config = auth.body if isinstance(auth.body, dict) else {}
    if not auth_config:
        lines.append(
            _note(f"OM published no /v1/system/config/auth (HTTP {auth.status}): defaults used")
        )
        auth_config = {"jwtPrincipalClaims": list(DEFAULT_PRINCIPAL_CLAIMS)}
    body = authorizer.body if isinstance(authorizer.body, dict) else {}
    return auth_config, str(body.get("principalDomain") or ""), lines


def run(options: Options, fetch: Callable[[], FetchedToken], echo: Callable[[str], None]) -> int:
    """The checklist, printed line by line with ``echo``; 0 exactly when OM accepts the token."""
    api = options.server.rstrip("/")
    echo(f"doctor openmetadata: OM at {api} (the workflow's hostPort)")

    def say(lines: Sequence[Check]) -> None:
        for check in lines:
            echo(check.line())

    try:
        fetched = fetch()
    except ClientError as exc:
        say([_fail(f"no token from the broker: {exc}")])
        return 1
    say([_ok(f"the broker handed out a token (source {fetched.source}, scope {fetched.scope!r})")])
    token = fetched.access_token
    lines, claims, kid = _token_checks(token)
    say(lines)
    jwks_url = ""
    if kid:
        lines, jwks_url = _find_jwks(
            str(claims.get("iss") or ""), kid, options.broker_url, options.timeout
        )
        say(lines)
    if claims:
        say(_life_check(claims, options.min_ttl))
    published = _published(api, options.timeout)
    if published is None:
        say([_fail(f"OM unreachable at {api} (check --server: the workflow's hostPort)")])
        return 1
    auth_config, domain, lines = published
    say(lines)
    principal = derive_principal(claims, auth_config, domain)
    say(_principal_checks(principal, domain))
    login = get_json(f"{api}/v1/users/loggedInUser", token, options.timeout)
    if login.status is None:
        say([_fail(f"OM unreachable at {api}: {login.error}")])
        return 1
    context = LoginContext(principal, domain, kid, jwks_url)
    accepted, lines = interpret_login(login.status, login.body, context)
    say(lines)
    if not accepted:
        return 1
    permissions = get_json(f"{api}/v1/permissions", token, options.timeout)
    if permissions.status != 200:  # noqa: PLR2004
        say([_note(f"OM did not list the user's permissions (HTTP {permissions.status})")])
    say(ingestion_checks(login.body, permissions.body))
    return 0
