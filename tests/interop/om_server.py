"""A loopback stand-in for the OpenMetadata server, enforcing OpenMetadata's own token rules.

Each rule below was read from openmetadata-service (paths under
``openmetadata-service/src/main/java/org/openmetadata/service/``) and is configured per
:class:`OmVariant`:

* ``security/JwtFilter.java`` (``filter``, ``decodeAndVerify``): ``Authorization: Bearer``
  (first header) holding a JWT, else 401 ("Not Authorized! Token not present" / "Invalid
  token."); ``exp``, when present, in the future ("Expired token!"); the key found by ``kid``
  in OM's own JWKS or in a ``publicKeyUrls`` JWKS (``security/MultiUrlJwkProvider.java``, an
  unknown ``kid`` is a 401) and an RS256 signature that verifies; ``iss``, ``aud``, ``nbf`` and
  ``iat`` are never checked; claim names match case-insensitively (a ``TreeMap`` with
  ``CASE_INSENSITIVE_ORDER``).
* ``security/JwtIdentityResolver.java`` + ``security/SecurityUtil.java``: email-first when
  ``emailClaim`` is set, the token is not a bot token and no ``jwtPrincipalClaimsMapping`` is
  set (falling back to the legacy claims only when ``jwtPrincipalClaims`` is non-empty);
  legacy: ``findUserNameFromClaims`` (first present claim, part before ``@``, lowercased; with
  a mapping, the ``username`` claim) and ``findEmailFromClaims`` (the mapped ``email`` must
  contain ``@``; a bare claim becomes ``<claim>@<principalDomain>``, and with no domain at all
  it is a 401); ``validateEmailVerifiedClaim`` refuses ``email_verified: false`` on both paths.
* ``SecurityUtil.validateDomainEnforcement`` / ``validateConfiguredEmailDomain``: with
  ``enforcePrincipalDomain``, a token that is neither a bot token nor OM-issued (OM's ``kid``
  and issuer) must carry ``allowedDomains`` (or, when empty, ``principalDomain``),
  case-insensitively; a bare ``sub`` has no domain.
* ``JwtFilter.validateBotToken`` (``security/auth/BotTokenCache.java``): an ``isBot: true``
  token must equal the token stored for that bot, so an IdP token carrying ``isBot`` fails.
* ``policyevaluator/SubjectCache.java``: authorisation loads the user by name; an unknown user
  is a 404 ``EntityNotFoundException`` ("user instance for <name> not found"). A write the
  user's roles do not allow is a 403 (``AuthorizationException``).
* ``resources/system/ConfigResource.java``: ``/system/config/auth`` (only provider,
  providerName, clientType, enableSelfSignup, jwtPrincipalClaims, jwtPrincipalClaimsMapping,
  clientId, authority, callbackUrl), ``/system/config/authorizer`` (only principalDomain) and
  ``/system/config/jwks`` (OM's own keys), all without authentication.
* ``resources/permissions/PermissionsResource.java``: ``GET /v1/permissions`` is a
  ``ResultList`` of ``ResourcePermission`` (``resource``, ``permissions`` of ``operation``,
  ``access`` in allow/deny/conditionalAllow/conditionalDeny/notAllow, ``role``, ``policy``).

Errors have OpenMetadata's shape, ``{"code": <status>, "message": "..."}``.

Authenticated, ``GET /api/v1/system/version`` answers the version the CLI is pinned to (the
newest JwtFilter lists it in ``EXCLUDED_ENDPOINTS``; older ones matched ``v1/version`` by
substring and so authenticated it: :attr:`OmVariant.public_version` picks). Paths the stand-in
does not implement are a 404 once the caller is authenticated and known, so a workflow stops
right after its first entity lookup.

Each request is recorded with its request line, headers and the answer given, and (when a
process id is being watched) with a snapshot of that process's argv and environment taken
while the request was being served: the process that sent the header is then known to be
the one ``token-broker exec`` became.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from tests.support import free_port

API = "/api/v1"
VERSION_PATH = f"{API}/system/version"
AUTH_CONFIG_PATH = f"{API}/system/config/auth"
AUTHORIZER_CONFIG_PATH = f"{API}/system/config/authorizer"
JWKS_PATH = f"{API}/system/config/jwks"
LOGGED_IN_USER_PATH = f"{API}/users/loggedInUser"
PERMISSIONS_PATH = f"{API}/permissions"
USER_BY_NAME_PREFIX = f"{API}/users/name/"

DEFAULT_PRINCIPAL_CLAIMS = ("email", "preferred_username", "sub")
# OpenMetadata's issuer for its own tokens (JWTTokenGenerator; openmetadata.yaml `jwtissuer`).
OM_ISSUER = "open-metadata.org"
INGESTION_ROLE = "IngestionBotRole"
# SecurityUtil.isValidEmail
_EMAIL = re.compile(r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$")

Jwks = Callable[[], dict[str, Any]]
# One `publicKeyUrls` entry: a URL serving a JWK set, or a callable returning one.
KeySource = Jwks | str

# What each role allows, per resource (a small model of OM's seeded policies): the ingestion
# role may create and edit what a metadata workflow writes; DataConsumer (the Organization
# team's default role, so every user's) may only view and edit descriptions and tags.
INGESTION_RESOURCES = (
    "databaseService", "database", "databaseSchema", "table", "storedProcedure",
    "ingestionPipeline", "tag", "classification", "type",
)  # fmt: skip
INGESTION_OPERATIONS = ("Create", "EditAll", "ViewAll", "Delete")
ROLE_GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    INGESTION_ROLE: dict.fromkeys(INGESTION_RESOURCES, INGESTION_OPERATIONS),
    "DataConsumer": dict.fromkeys(INGESTION_RESOURCES, ("ViewAll", "EditDescription", "EditTags")),
}
ROLE_POLICY = {INGESTION_ROLE: "IngestionBotPolicy", "DataConsumer": "DataConsumerPolicy"}
WRITE_OPERATION = {"POST": "Create", "PUT": "Create", "PATCH": "EditAll", "DELETE": "Delete"}


class OmError(Exception):
    """An answer OpenMetadata gives as an error: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def body(self) -> dict[str, Any]:
        """OpenMetadata's error body."""
        return {"code": self.status, "message": self.message}


def _unauthorized(message: str) -> OmError:
    return OmError(401, message)


@dataclass(frozen=True)
class OmUser:
    """A user entity OpenMetadata knows (``entity/teams/user.json``)."""

    name: str
    email: str
    is_bot: bool = False
    is_admin: bool = False
    roles: tuple[str, ...] = (INGESTION_ROLE,)

    def as_json(self) -> dict[str, Any]:
        """The user as ``GET /v1/users/...`` returns it (the fields a client reads)."""
        user_id = uuid.uuid5(uuid.NAMESPACE_URL, f"om-user:{self.name}")
        return {
            "id": str(user_id),
            "name": self.name,
            "fullyQualifiedName": self.name,
            "email": self.email,
            "isBot": self.is_bot,
            "isAdmin": self.is_admin,
            "deleted": False,
            "roles": [
                {
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"om-role:{role}")),
                    "type": "role",
                    "name": role,
                    "fullyQualifiedName": role,
                }
                for role in self.roles
            ],
        }


@dataclass(frozen=True)
class OmVariant:
    """How one OpenMetadata server is configured (``openmetadata.yaml``) and what it holds.

    ``users`` None means every principal is a known non-bot user with the ingestion role
    (for tests about what the CLI sends, not about OM's user checks).
    """

    name: str = "legacy"
    jwt_principal_claims: tuple[str, ...] = DEFAULT_PRINCIPAL_CLAIMS
    # "logical:claim" entries, e.g. ("username:preferred_username", "email:email").
    jwt_principal_claims_mapping: tuple[str, ...] = ()
    email_claim: str | None = None  # 2026 servers: JwtIdentityResolver, email-first
    principal_domain: str = "open-metadata.org"
    enforce_principal_domain: bool = False
    allowed_domains: tuple[str, ...] = ()
    allowed_email_domains: tuple[str, ...] = ()
    public_key_urls: tuple[KeySource, ...] = ()
    users: tuple[OmUser, ...] | None = None
    public_version: bool = False
    provider: str = "custom-oidc"
    provider_name: str = "broker"
    client_type: str = "public"
    client_id: str = "openmetadata-ui"
    authority: str = "https://idp.example.com"
    callback_url: str = "http://localhost:8585/callback"

    @property
    def claims_mapping(self) -> dict[str, str]:
        """``SecurityUtil.buildPrincipalClaimsMapping``: "name:claim" entries with one colon."""
        pairs = (entry.split(":") for entry in self.jwt_principal_claims_mapping)
        return {parts[0]: parts[1] for parts in pairs if len(parts) == 2}

    @property
    def resolved_principal_domain(self) -> str | None:
        """``SecurityUtil.resolvePrincipalDomain``."""
        if self.principal_domain:
            return self.principal_domain
        for domains in (self.allowed_email_domains, self.allowed_domains):
            if domains:
                return min(domains)
        return None


@dataclass(frozen=True)
class Identity:
    """Who JwtFilter decided the token is."""

    user_name: str
    email: str
    bot_claim: bool
    om_issued: bool
    email_first: bool


@dataclass(frozen=True)
class ProcessSnapshot:
    """A process's argv and environment (``/proc/<pid>``), as they were during a request."""

    pid: int
    argv: list[str]
    environ: dict[str, str] = field(repr=False)

    @classmethod
    def read(cls, pid: int) -> ProcessSnapshot | None:
        """Snapshot ``pid``; None when it is gone."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        environ = dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)
        return cls(pid, [arg.decode() for arg in argv if arg], environ)


@dataclass(frozen=True)
class SeenRequest:
    """One request as the fake server received and answered it."""

    request_line: str
    method: str
    path: str
    headers: list[tuple[str, str]] = field(repr=False)
    status: int
    process: ProcessSnapshot | None = field(repr=False)

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def bearer(self) -> str | None:
        """The token of the one ``Authorization: Bearer`` header, else None."""
        values = self.header("Authorization")
        if len(values) != 1:
            return None
        scheme, _, token = values[0].partition(" ")
        return token if scheme == "Bearer" and token else None


def _b64json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(value, dict):
        raise TypeError("not a JSON object")
    return value


def _claim_str(claims: Mapping[str, Any], name: str | None) -> str:
    """``SecurityUtil.getClaimOrObject``: the claim as a string, "" when absent or not one."""
    if name is None:
        return ""
    value = claims.get(name.lower())
    return value if isinstance(value, str) else ""


def _fetch_jwks(source: KeySource) -> dict[str, Any] | None:
    """One ``publicKeyUrls`` JWK set; None when it cannot be had (``UrlJwkProvider``'s
    failure is suppressed by ``MultiUrlJwkProvider``, which goes on to the next URL)."""
    try:
        if callable(source):
            return source()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(source, timeout=5) as response:
            document: dict[str, Any] = json.load(response)
    except (OSError, ValueError):
        return None
    return document


class FakeOpenMetadata:
    """The server on ``127.0.0.1:<port>``; ``api_url`` is what ``hostPort`` is set to.

    ``jwks`` (optional) is one more ``publicKeyUrls`` entry, ahead of the variant's.
    """

    def __init__(
        self, jwks: Jwks | None = None, version: str = "1.6.0", variant: OmVariant | None = None
    ) -> None:
        self.variant = variant or OmVariant()
        self.key_sources: tuple[KeySource, ...] = (
            *(() if jwks is None else (jwks,)),
            *self.variant.public_key_urls,
        )
        self.version = version
        self.om_key = RSAKey.generate_key(2048, parameters={"kid": f"om-{uuid.uuid4().hex[:8]}"})
        self._bot_tokens: dict[str, str] = {}
        for user in self.variant.users or ():
            if user.is_bot:
                self._bot_tokens[user.name] = self.issue_om_token(user.name, is_bot=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self._lock = threading.Lock()
        self._requests: list[SeenRequest] = []
        self._watched: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-openmetadata", daemon=True
        )
        self._thread.start()

    # --- OM's own tokens (JWTTokenGenerator) and the bot token store (BotTokenCache) ---

    @property
    def om_kid(self) -> str:
        """The ``kid`` of OM's own signing key."""
        return str(self.om_key.kid)

    def own_jwks(self) -> dict[str, Any]:
        """What ``/system/config/jwks`` serves: OM's own public key."""
        public = self.om_key.as_dict(private=False)
        return {"keys": [{**public, "use": "sig", "alg": "RS256"}]}

    def issue_om_token(self, name: str, *, is_bot: bool, ttl: int | None = 3600) -> str:
        """A token as OpenMetadata issues it (its key, its issuer)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": OM_ISSUER,
            "sub": name,
            "email": f"{name}@{self.variant.resolved_principal_domain or 'openmetadata.org'}",
            "isBot": is_bot,
            "iat": now,
        }
        if ttl is not None:
            claims["exp"] = now + ttl
        return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": self.om_kid}, claims, self.om_key)

    def bot_token(self, name: str) -> str | None:
        """The token stored on bot ``name`` (``BotTokenCache.getToken``)."""
        with self._lock:
            return self._bot_tokens.get(name)

    def store_bot_token(self, name: str, token: str) -> None:
        """Store ``token`` on bot ``name``, as regenerating it in OM's UI does."""
        with self._lock:
            self._bot_tokens[name] = token

    # --- recording ---

    @property
    def requests(self) -> list[SeenRequest]:
        """What was received so far, in order."""
        with self._lock:
            return list(self._requests)

    def watch(self, pid: int | None) -> None:
        """Snapshot process ``pid`` with every request from now on (None stops it)."""
        with self._lock:
            self._watched = pid

    def reset(self) -> None:
        """Forget the recorded requests and the watched process."""
        with self._lock:
            self._requests.clear()
            self._watched = None

    def record(self, seen: SeenRequest) -> None:
        """Append ``seen`` (the handler calls this)."""
        with self._lock:
            self._requests.append(seen)

    def watched(self) -> ProcessSnapshot | None:
        """A snapshot of the watched process, if any."""
        with self._lock:
            pid = self._watched
        return None if pid is None else ProcessSnapshot.read(pid)

    # --- users (SubjectCache) ---

    def find_user(self, name: str) -> OmUser | None:
        """The user named ``name``; with ``users`` None, any name is an ingestion user."""
        if self.variant.users is None:
            domain = self.variant.resolved_principal_domain or "openmetadata.org"
            return OmUser(name=name, email=f"{name}@{domain}")
        return next((u for u in self.variant.users if u.name == name), None)

    def subject(self, name: str) -> OmUser:
        """``SubjectCache.getSubjectContext``: the user, or a 404 EntityNotFoundException."""
        user = self.find_user(name)
        if user is None:
            raise OmError(404, f"user instance for {name} not found")
        return user

    # --- JwtFilter ---

    def authenticate(self, authorization: Iterable[str]) -> Identity:
        """What OpenMetadata's ``JwtFilter.filter`` does; raises :class:`OmError` (401)."""
        token = self._extract_token(next(iter(authorization), None))
        header, claims = self._decode_and_verify(token)
        bot_claim = claims.get("isbot") is True
        identity = self._resolve_identity(claims, header.get("kid"), bot_claim)
        self._check_domain(identity, claims)
        if bot_claim and token != self.bot_token(identity.user_name):
            raise _unauthorized("The given token does not match the current bot's token!")
        return identity

    @staticmethod
    def _extract_token(source: str | None) -> str:
        prefix = "Bearer"
        if not source or not source.startswith(prefix) or len(source) <= len(prefix) + 1:
            raise _unauthorized("Not Authorized! Token not present")
        return source[len(prefix) + 1 :]

    def _decode_and_verify(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        parts = token.split(".")
        try:
            header, payload = _b64json(parts[0]), _b64json(parts[1])
        except (ValueError, TypeError, IndexError, binascii.Error):
            raise _unauthorized("Invalid token.") from None
        if len(parts) != 3:
            raise _unauthorized("Invalid token.")
        exp = payload.get("exp")
        if isinstance(exp, int | float) and exp < time.time():
            raise _unauthorized("Expired token!")
        key = self._find_key(header.get("kid"))
        try:
            jwt.decode(token, key, algorithms=["RS256"])
        except (JoseError, ValueError):
            raise _unauthorized(
                "Invalid token. Token verification failed. Public key mismatch."
            ) from None
        # JwtFilter.extractClaims: a TreeMap with String.CASE_INSENSITIVE_ORDER.
        claims = {str(name).lower(): value for name, value in payload.items()}
        return header, claims

    def _find_key(self, kid: object) -> RSAKey:
        """``MultiUrlJwkProvider.get``: OM's own key first, then each ``publicKeyUrls`` set."""
        for document in (self.own_jwks(), *map(_fetch_jwks, self.key_sources)):
            for jwk in document.get("keys", []) if document else ():
                if kid is not None and jwk.get("kid") == kid and jwk.get("kty") == "RSA":
                    return RSAKey.import_key(jwk)
        raise _unauthorized("Token signing key not found in configured public keys")

    def _resolve_identity(self, claims: dict[str, Any], kid: object, bot: bool) -> Identity:
        """``JwtIdentityResolver.resolve`` (2026) with ``SecurityUtil``'s legacy claim rules."""
        variant = self.variant
        mapping = variant.claims_mapping
        om_issued = kid == self.om_kid and claims.get("iss") == OM_ISSUER
        if not bot and variant.email_claim and not mapping:
            email = self._email_from_claim(claims, variant.email_claim)
            if email is not None:
                self._check_email_verified(claims, email)
                name = self._user_name_for_email(email)
                return Identity(name, email, bot, om_issued, email_first=True)
        if mapping and not bot:
            raw_name = _claim_str(claims, mapping.get("username"))
            if not raw_name:
                raise _unauthorized("Invalid JWT token, 'username' claim is not present")
            raw_email = _claim_str(claims, mapping.get("email"))
            if not raw_email or "@" not in raw_email:
                raise _unauthorized(
                    f"Invalid JWT token, 'email' claim is not present or invalid : {raw_email}"
                )
            email = raw_email
        else:
            raw_name = self._first_principal_claim(claims)
            domain = variant.resolved_principal_domain
            if "@" in raw_name:
                email = raw_name
            elif domain:
                email = f"{raw_name}@{domain}"
            else:
                raise _unauthorized(
                    f"JWT claim value '{raw_name}' is not an email address and no domain is"
                    " configured."
                )
        email = email.lower()
        self._check_email_verified(claims, email)
        return Identity(raw_name.split("@")[0].lower(), email, bot, om_issued, email_first=False)

    def _email_from_claim(self, claims: dict[str, Any], email_claim: str) -> str | None:
        """``SecurityUtil.extractEmailFromClaim``; None when the legacy fallback applies."""
        value = _claim_str(claims, email_claim).lower()
        if value and _EMAIL.match(value):
            return value
        if self.variant.jwt_principal_claims:  # JwtIdentityResolver.canFallbackToLegacyFlow
            return None
        if not value:
            raise _unauthorized(f"Authentication failed: email claim '{email_claim}' not found")
        raise _unauthorized(f"Authentication failed: invalid email format in claim '{email_claim}'")

    def _first_principal_claim(self, claims: dict[str, Any]) -> str:
        """``SecurityUtil.getFirstMatchJwtClaim``."""
        for name in self.variant.jwt_principal_claims:
            if name.lower() in claims:
                return _claim_str(claims, name)
        raise _unauthorized(
            "Invalid JWT token, none of the following claims are present "
            f"[{', '.join(self.variant.jwt_principal_claims)}]"
        )

    @staticmethod
    def _check_email_verified(claims: dict[str, Any], email: str) -> None:
        """``SecurityUtil.validateEmailVerifiedClaim``: only an explicit false is refused."""
        if str(claims.get("email_verified")).lower() == "false":
            raise _unauthorized(
                f"Authentication failed: email '{email}' is not verified by the identity provider"
            )

    def _user_name_for_email(self, email: str) -> str:
        """``JwtFilter.resolveUserNameForEmail``."""
        users = self.variant.users
        if users is None:
            return email.split("@", maxsplit=1)[0]
        owner = next((u for u in users if u.email.lower() == email), None)
        if owner is not None:
            return owner.name
        candidate = email.split("@", maxsplit=1)[0]
        if any(u.name == candidate for u in users):
            raise _unauthorized(
                f"User with email {email} is not registered. Contact your administrator."
            )
        return candidate

    def _check_domain(self, identity: Identity, claims: dict[str, Any]) -> None:
        """``JwtFilter.checkValidationsForToken``: the domain rules for IdP tokens."""
        variant = self.variant
        if identity.om_issued:
            return
        domain = identity.email.split("@", 1)[1] if "@" in identity.email else ""
        if identity.email_first:
            # SecurityUtil.validateConfiguredEmailDomain
            if variant.allowed_email_domains:
                expected: tuple[str, ...] = variant.allowed_email_domains
            elif not variant.enforce_principal_domain:
                return
            else:
                expected = variant.allowed_domains or (
                    variant.principal_domain or "openmetadata.org",
                )
            if not any(domain.lower() == d.lower() for d in expected):
                raise _unauthorized(f"Authentication failed: domain '{domain}' not in allowed list")
            return
        if not variant.enforce_principal_domain or identity.bot_claim:
            return
        # SecurityUtil.validateDomainEnforcement: the domain of the claim itself, so a bare
        # `sub` (no "@") has none, whatever principalDomain was appended to make its email.
        if variant.claims_mapping:
            raw = _claim_str(claims, variant.claims_mapping.get("email"))
        else:
            raw = self._first_principal_claim(claims)
        claim_domain = raw.split("@", 1)[1] if "@" in raw else ""
        expected = variant.allowed_domains or (
            (variant.principal_domain,) if variant.principal_domain else ()
        )
        if not any(claim_domain.lower() == d.lower() for d in expected):
            raise _unauthorized(
                f"Not Authorized! Email does not match the principal domain {sorted(expected)}"
            )

    # --- what the endpoints answer ---

    def public_answer(self, path: str) -> dict[str, Any] | None:
        """``ConfigResource``'s unauthenticated answers (None: not a public path)."""
        variant = self.variant
        if path == AUTH_CONFIG_PATH:
            return {
                "provider": variant.provider,
                "providerName": variant.provider_name,
                "clientType": variant.client_type,
                "enableSelfSignup": False,
                "jwtPrincipalClaims": list(variant.jwt_principal_claims),
                "jwtPrincipalClaimsMapping": list(variant.jwt_principal_claims_mapping),
                "clientId": variant.client_id,
                "authority": variant.authority,
                "callbackUrl": variant.callback_url,
            }
        if path == AUTHORIZER_CONFIG_PATH:
            return {"principalDomain": variant.principal_domain}
        if path == JWKS_PATH:
            return self.own_jwks()
        if path == VERSION_PATH and variant.public_version:
            return self.version_body()
        return None

    def version_body(self) -> dict[str, Any]:
        """``GET /v1/system/version``."""
        return {"version": self.version, "revision": "interop", "timestamp": 0}

    def permissions(self, user: OmUser) -> dict[str, Any]:
        """``GET /v1/permissions`` for ``user``: ``ResultList<ResourcePermission>``."""
        roles = ("DataConsumer", *user.roles)
        operations = sorted({op for grants in ROLE_GRANTS.values() for ops in grants.values()
                             for op in ops})  # fmt: skip
        data = []
        for resource in INGESTION_RESOURCES:
            entries = []
            for operation in operations:
                role = next(
                    (r for r in roles if operation in ROLE_GRANTS.get(r, {}).get(resource, ())),
                    None,
                )
                allowed = user.is_admin or role is not None
                entries.append(
                    {
                        "operation": operation,
                        "access": "allow" if allowed else "notAllow",
                        "role": role,
                        "policy": ROLE_POLICY.get(role or ""),
                    }
                )
            data.append({"resource": resource, "permissions": entries})
        return {"data": data, "paging": {"total": len(data)}}

    def allows(self, user: OmUser, operation: str) -> bool:
        """Whether ``user``'s roles allow ``operation`` on the ingestion resources."""
        grants = (ROLE_GRANTS.get(r, {}) for r in ("DataConsumer", *user.roles))
        return user.is_admin or any(operation in ops for g in grants for ops in g.values())

    def answer(self, method: str, path: str, authorization: list[str]) -> tuple[int, Any]:
        """Status and body for one request."""
        public = self.public_answer(path) if method == "GET" else None
        if public is not None:
            return 200, public
        try:
            return 200, self._authenticated_answer(method, path, authorization)
        except OmError as error:
            return error.status, error.body

    def _authenticated_answer(self, method: str, path: str, authorization: list[str]) -> Any:
        identity = self.authenticate(authorization)
        if method == "GET" and path == VERSION_PATH:
            return self.version_body()
        user = self.subject(identity.user_name)
        routes: dict[str, Callable[[], Any]] = {
            LOGGED_IN_USER_PATH: user.as_json,
            PERMISSIONS_PATH: lambda: self.permissions(user),
        }
        if method == "GET" and path in routes:
            return routes[path]()
        if method == "GET" and path.startswith(USER_BY_NAME_PREFIX):
            return self.subject(path.removeprefix(USER_BY_NAME_PREFIX)).as_json()
        operation = WRITE_OPERATION.get(method)
        if operation is not None and not self.allows(user, operation):
            message = f"operations [{operation}] not allowed"
            raise OmError(403, f"Principal: CatalogPrincipal{{name='{user.name}'}} {message}")
        raise OmError(404, f"{path} not found")

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _handler_for(server: FakeOpenMetadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 20))
            snapshot = server.watched()
            path = self.path.split("?", 1)[0]
            authorization = self.headers.get_all("Authorization") or []
            status, body = server.answer(self.command, path, authorization)
            server.record(
                SeenRequest(
                    request_line=self.requestline,
                    method=self.command,
                    path=path,
                    headers=list(self.headers.items()),
                    status=status,
                    process=snapshot,
                )
            )
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Silent: the request line is recorded, and headers carry the token."""

    return Handler
