# One-line docstrings name the rule and its OpenMetadata source file, which makes some long.
# ruff: noqa: E501
"""The OpenMetadata stand-in (tests/interop/om_server.py) refuses what OpenMetadata refuses.

Pure tests of the stand-in: no ``metadata`` CLI, no broker, so they run in ``make test``. Tokens
are signed with RSA keys generated here (joserfc); the IdP's JWK set is served from loopback
(a ``publicKeyUrls`` URL) or handed over as a callable. Each docstring names the OpenMetadata
rule and the openmetadata-service source file it comes from (paths under
``openmetadata-service/src/main/java/org/openmetadata/service/``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.interop.om_server import (
    AUTH_CONFIG_PATH,
    AUTHORIZER_CONFIG_PATH,
    INGESTION_ROLE,
    JWKS_PATH,
    LOGGED_IN_USER_PATH,
    PERMISSIONS_PATH,
    VERSION_PATH,
    FakeOpenMetadata,
    OmUser,
    OmVariant,
)
from tests.support import free_port

DOMAIN = "example.com"
SERVICE = OmUser(name="ingestion-client", email=f"ingestion-client@{DOMAIN}")
ALICE = OmUser(name="alice", email=f"alice@{DOMAIN}", roles=())
BOT = OmUser(name="ingestion-bot", email=f"ingestion-bot@{DOMAIN}", is_bot=True)
BY_EMAIL = OmUser(name="svc_by_email", email=f"etl@{DOMAIN}")
USERS = (SERVICE, ALICE, BOT, BY_EMAIL)


class JwksServer:
    """A loopback HTTP server publishing one JWK set at ``url`` (a ``publicKeyUrls`` entry)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        body = json.dumps(jwks).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Silent."""

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/jwks"
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def public_jwks(key: RSAKey) -> dict[str, Any]:
    """``key``'s public half as a JWK set."""
    return {"keys": [{**key.as_dict(private=False), "use": "sig", "alg": "RS256"}]}


@pytest.fixture(scope="module")
def idp_key() -> RSAKey:
    """The identity provider's signing key (published through a callable JWKS source)."""
    return RSAKey.generate_key(2048, parameters={"kid": "idp-1"})


@pytest.fixture(scope="module")
def other_idp_key() -> RSAKey:
    """A second IdP's key, published at a loopback ``publicKeyUrls`` URL."""
    return RSAKey.generate_key(2048, parameters={"kid": "idp-2"})


@pytest.fixture(scope="module")
def jwks_url(other_idp_key: RSAKey) -> Iterator[str]:
    """The URL of the second IdP's JWK set."""
    server = JwksServer(public_jwks(other_idp_key))
    yield server.url
    server.stop()


def sign(key: RSAKey, claims: dict[str, Any], kid: str | None = None) -> str:
    """An RS256 JWT with ``claims``, ``kid`` defaulting to the key's."""
    header = {"alg": "RS256", "typ": "JWT", "kid": kid or str(key.kid)}
    return jwt.encode(header, claims, key)


def client_token(key: RSAKey, **claims: Any) -> str:
    """A client-credentials access token: ``sub`` = client id, one hour of life."""
    base: dict[str, Any] = {"sub": "ingestion-client", "exp": int(time.time()) + 3600}
    return sign(key, {**base, **claims})


def om(variant: OmVariant, idp_key: RSAKey, jwks_url: str | None = None) -> FakeOpenMetadata:
    """A stand-in for ``variant`` trusting ``idp_key`` (and ``jwks_url`` when given)."""
    sources = (jwks_url,) if jwks_url else ()
    full = OmVariant(**{**variant.__dict__, "public_key_urls": sources})
    return FakeOpenMetadata(lambda: public_jwks(idp_key), "1.6.0", full)


def get(server: FakeOpenMetadata, path: str, token: str | None = None) -> httpx.Response:
    """GET ``path`` on ``server`` with ``Authorization: Bearer <token>`` when given."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with httpx.Client(trust_env=False, timeout=10) as client:
        return client.get(server.url + path, headers=headers)


def assert_refused(response: httpx.Response, status: int, fragment: str) -> None:
    """OpenMetadata's error shape, ``{"code": status, "message": ...}``, with ``fragment``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status
    assert fragment in body["message"], body


LEGACY = OmVariant(name="legacy", principal_domain=DOMAIN, users=USERS)
NO_DOMAIN = OmVariant(name="legacy-no-domain", principal_domain="", users=USERS)
MAPPING = OmVariant(
    name="mapping",
    principal_domain=DOMAIN,
    jwt_principal_claims_mapping=("username:sub", "email:email"),
    users=USERS,
)
EMAIL_FIRST = OmVariant(
    name="email-first", email_claim="email", principal_domain=DOMAIN, users=USERS
)
EMAIL_ONLY = OmVariant(
    name="email-only", email_claim="email", jwt_principal_claims=(), principal_domain=DOMAIN,
    users=USERS,
)  # fmt: skip
ENFORCED = OmVariant(
    name="enforced", principal_domain=DOMAIN, enforce_principal_domain=True, users=USERS
)
ALLOWED = OmVariant(
    name="allowed-domains",
    principal_domain=DOMAIN,
    enforce_principal_domain=True,
    allowed_domains=("partner.org",),
    users=USERS,
)


@pytest.fixture(scope="module")
def legacy(idp_key: RSAKey, jwks_url: str) -> Iterator[FakeOpenMetadata]:
    """The legacy variant (default jwtPrincipalClaims, no domain enforcement)."""
    with om(LEGACY, idp_key, jwks_url) as server:
        yield server


# --- JwtFilter: what a token must be ---


def test_opaque_token_is_401(legacy: FakeOpenMetadata) -> None:
    """JWT only: an opaque access token is a 401 (JwtFilter.decodeAndVerify, JwtFilter.java)."""
    assert_refused(get(legacy, LOGGED_IN_USER_PATH, "2YotnFZFEjr1zCsicMWpAA"), 401, "Invalid token")


def test_missing_bearer_is_401(legacy: FakeOpenMetadata) -> None:
    """No Bearer header is "Token not present" (JwtFilter.extractTokenFromString, JwtFilter.java)."""
    assert_refused(get(legacy, LOGGED_IN_USER_PATH), 401, "Token not present")


def test_expired_token_is_401(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """An ``exp`` in the past is "Expired token!" (JwtFilter.decodeAndVerify, JwtFilter.java)."""
    token = client_token(idp_key, exp=int(time.time()) - 5)
    assert_refused(get(legacy, LOGGED_IN_USER_PATH, token), 401, "Expired token!")


def test_token_without_exp_is_accepted(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """A token with no ``exp`` never expires (JwtFilter.decodeAndVerify, JwtFilter.java)."""
    token = sign(idp_key, {"sub": "ingestion-client"})
    assert get(legacy, LOGGED_IN_USER_PATH, token).status_code == 200


def test_unknown_kid_is_401(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """A ``kid`` in no trusted JWKS is a 401 (MultiUrlJwkProvider.get, MultiUrlJwkProvider.java)."""
    token = sign(idp_key, {"sub": "ingestion-client"}, kid="rotated-away")
    assert_refused(get(legacy, LOGGED_IN_USER_PATH, token), 401, "signing key not found")


def test_kid_from_a_public_key_url_is_accepted(
    legacy: FakeOpenMetadata, other_idp_key: RSAKey
) -> None:
    """Keys of any publicKeyUrls JWKS verify tokens (MultiUrlJwkProvider, MultiUrlJwkProvider.java)."""
    token = client_token(other_idp_key)
    assert get(legacy, LOGGED_IN_USER_PATH, token).status_code == 200


def test_bad_signature_is_401(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """A signature the ``kid``'s key does not verify is a 401 (JwtFilter.decodeAndVerify, JwtFilter.java)."""
    forger = RSAKey.generate_key(2048)
    token = sign(forger, {"sub": "ingestion-client"}, kid=str(idp_key.kid))
    assert_refused(get(legacy, LOGGED_IN_USER_PATH, token), 401, "verification failed")


def test_iss_aud_nbf_iat_are_not_checked(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """iss, aud, nbf and iat are never checked (JwtFilter.decodeAndVerify, JwtFilter.java)."""
    future = int(time.time()) + 7200
    token = client_token(idp_key, iss="https://anyone", aud="elsewhere", nbf=future, iat=future)
    assert get(legacy, LOGGED_IN_USER_PATH, token).status_code == 200


def test_claim_names_are_case_insensitive(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """Claim names match case-insensitively (JwtFilter.extractClaims TreeMap, JwtFilter.java)."""
    token = sign(idp_key, {"EMAIL": f"Ingestion-Client@{DOMAIN}"})
    response = get(legacy, LOGGED_IN_USER_PATH, token)
    assert response.status_code == 200
    assert response.json()["name"] == "ingestion-client"


# --- SecurityUtil / JwtIdentityResolver: the principal ---


def test_legacy_principal_first_present_claim(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """Legacy: first present jwtPrincipalClaims, before @, lowercased (findUserNameFromClaims, SecurityUtil.java)."""
    token = client_token(idp_key, preferred_username="ALICE@elsewhere.net")
    response = get(legacy, LOGGED_IN_USER_PATH, token)
    assert response.status_code == 200
    assert response.json()["name"] == "alice"


def test_legacy_no_principal_claim_is_401(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """None of jwtPrincipalClaims present is a 401 (getFirstMatchJwtClaim, SecurityUtil.java)."""
    token = sign(idp_key, {"client_id": "ingestion-client"})
    assert_refused(get(legacy, LOGGED_IN_USER_PATH, token), 401, "none of the following claims")


def test_legacy_bare_sub_without_any_domain_is_401(idp_key: RSAKey) -> None:
    """Legacy, no principalDomain: a bare sub cannot become an email (findEmailFromClaims, SecurityUtil.java)."""
    with om(NO_DOMAIN, idp_key) as server:
        response = get(server, LOGGED_IN_USER_PATH, client_token(idp_key))
    assert_refused(response, 401, "is not an email address")


def test_mapping_email_without_at_is_401(idp_key: RSAKey) -> None:
    """jwtPrincipalClaimsMapping: the mapped email must contain @ (findEmailFromClaims, SecurityUtil.java)."""
    with om(MAPPING, idp_key) as server:
        bare = get(server, LOGGED_IN_USER_PATH, client_token(idp_key, email="not-an-email"))
        good = get(server, LOGGED_IN_USER_PATH, client_token(idp_key, email=SERVICE.email))
    assert_refused(bare, 401, "'email' claim is not present or invalid")
    assert good.status_code == 200
    assert good.json()["name"] == "ingestion-client"


def test_email_first_resolves_user_by_email(idp_key: RSAKey) -> None:
    """emailClaim: the user is found by email, not by name (JwtIdentityResolver.resolve, JwtIdentityResolver.java)."""
    with om(EMAIL_FIRST, idp_key) as server:
        response = get(server, LOGGED_IN_USER_PATH, client_token(idp_key, email=BY_EMAIL.email))
    assert response.status_code == 200
    assert response.json()["name"] == "svc_by_email"


def test_email_first_refuses_unverified_email(idp_key: RSAKey) -> None:
    """email_verified=false is a 401 (SecurityUtil.validateEmailVerifiedClaim, JwtIdentityResolver.java)."""
    token = client_token(idp_key, email=SERVICE.email, email_verified=False)
    with om(EMAIL_FIRST, idp_key) as server:
        response = get(server, LOGGED_IN_USER_PATH, token)
    assert_refused(response, 401, "is not verified")


def test_legacy_also_refuses_unverified_email(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """The legacy path refuses email_verified=false too (JwtIdentityResolver.resolve, JwtIdentityResolver.java)."""
    token = client_token(idp_key, email_verified="false")
    assert_refused(get(legacy, LOGGED_IN_USER_PATH, token), 401, "is not verified")


def test_email_first_falls_back_to_legacy_claims(idp_key: RSAKey) -> None:
    """No email claim: legacy claims, only if jwtPrincipalClaims is non-empty (canFallbackToLegacyFlow, JwtIdentityResolver.java)."""
    with om(EMAIL_FIRST, idp_key) as server:
        fallback = get(server, LOGGED_IN_USER_PATH, client_token(idp_key))
    with om(EMAIL_ONLY, idp_key) as server:
        refused = get(server, LOGGED_IN_USER_PATH, client_token(idp_key))
    assert fallback.status_code == 200
    assert fallback.json()["name"] == "ingestion-client"
    assert_refused(refused, 401, "email claim 'email' not found")


def test_email_first_unregistered_email_cannot_take_a_name(idp_key: RSAKey) -> None:
    """An unknown email whose local part names another user is a 401 (resolveUserNameForEmail, JwtFilter.java)."""
    token = client_token(idp_key, email="alice@other.example.com")
    with om(EMAIL_FIRST, idp_key) as server:
        response = get(server, LOGGED_IN_USER_PATH, token)
    assert_refused(response, 401, "is not registered")


# --- enforcePrincipalDomain ---


def test_enforced_domain_refuses_bare_sub(idp_key: RSAKey) -> None:
    """enforcePrincipalDomain: a bare sub has no domain (validateDomainEnforcement, SecurityUtil.java)."""
    with om(ENFORCED, idp_key) as server:
        response = get(server, LOGGED_IN_USER_PATH, client_token(idp_key))
    assert_refused(response, 401, "does not match the principal domain")


def test_enforced_domain_accepts_principal_domain_email(idp_key: RSAKey) -> None:
    """enforcePrincipalDomain: an email of principalDomain passes, any case (validateDomainEnforcement, SecurityUtil.java)."""
    token = client_token(idp_key, email=f"ingestion-client@{DOMAIN.upper()}")
    with om(ENFORCED, idp_key) as server:
        assert get(server, LOGGED_IN_USER_PATH, token).status_code == 200


def test_allowed_domains_replace_principal_domain(idp_key: RSAKey) -> None:
    """allowedDomains, when set, are the domains enforced (validateDomainEnforcement, SecurityUtil.java)."""
    with om(ALLOWED, idp_key) as server:
        partner = get(
            server, LOGGED_IN_USER_PATH, client_token(idp_key, email="ingestion-client@partner.org")
        )
        own = get(server, LOGGED_IN_USER_PATH, client_token(idp_key, email=SERVICE.email))
    assert partner.status_code == 200
    assert_refused(own, 401, "does not match the principal domain")


def test_unenforced_domain_accepts_bare_sub(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """enforcePrincipalDomain off: a bare sub is fine (JwtFilter.checkValidationsForToken, JwtFilter.java)."""
    assert get(legacy, LOGGED_IN_USER_PATH, client_token(idp_key)).status_code == 200


def test_om_issued_bot_token_skips_domain_enforcement(idp_key: RSAKey) -> None:
    """Bot and OM-issued tokens skip domain enforcement (checkValidationsForToken, JwtFilter.java)."""
    with om(ENFORCED, idp_key) as server:
        token = server.bot_token(BOT.name)
        assert token is not None
        response = get(server, LOGGED_IN_USER_PATH, token)
    assert response.status_code == 200
    assert response.json()["isBot"] is True


# --- Bot tokens (BotTokenCache) ---


def test_bot_token_must_equal_the_stored_one(legacy: FakeOpenMetadata) -> None:
    """isBot tokens must equal the bot's stored token (JwtFilter.validateBotToken, auth/BotTokenCache.java)."""
    stale = legacy.issue_om_token(BOT.name, is_bot=True, ttl=7200)
    assert_refused(get(legacy, LOGGED_IN_USER_PATH, stale), 401, "current bot's token")


def test_idp_token_must_not_carry_is_bot(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """An IdP token with isBot: true is a 401 (JwtFilter.validateBotToken, auth/BotTokenCache.java)."""
    token = client_token(idp_key, sub=BOT.name, isBot=True)
    assert_refused(get(legacy, LOGGED_IN_USER_PATH, token), 401, "current bot's token")


# --- The user must exist; policy ---


def test_unknown_user_is_404(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """An unknown user is a 404 EntityNotFoundException (getSubjectContext, policyevaluator/SubjectCache.java)."""
    token = client_token(idp_key, sub="nobody")
    assert_refused(
        get(legacy, LOGGED_IN_USER_PATH, token), 404, "user instance for nobody not found"
    )


def test_unknown_user_is_404_on_any_entity_call(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """Authorisation loads the user first, so entity calls 404 too (SubjectCache.java)."""
    token = client_token(idp_key, sub="nobody")
    path = "/api/v1/services/databaseServices/name/x"
    assert_refused(get(legacy, path, token), 404, "user instance for nobody not found")


def test_write_without_ingestion_role_is_403(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """A write the user's roles do not allow is a 403 (Authorizer/DefaultAuthorizer.java)."""
    url = legacy.url + "/api/v1/services/databaseServices"
    with httpx.Client(trust_env=False, timeout=10) as client:
        alice = client.put(
            url, headers={"Authorization": f"Bearer {client_token(idp_key, sub='alice')}"}
        )
        service = client.put(url, headers={"Authorization": f"Bearer {client_token(idp_key)}"})
    assert_refused(alice, 403, "not allowed")
    assert service.status_code == 404


def test_permissions_list_shape_per_role(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """GET /permissions: ResultList of ResourcePermission (resources/permissions/PermissionsResource.java)."""

    def create_access(sub: str) -> set[str]:
        body = get(legacy, PERMISSIONS_PATH, client_token(idp_key, sub=sub)).json()
        assert body["paging"]["total"] == len(body["data"])
        return {
            p["access"]
            for resource in body["data"]
            for p in resource["permissions"]
            if p["operation"] == "Create"
        }

    assert create_access("ingestion-client") == {"allow"}
    assert create_access("alice") == {"notAllow"}


def test_logged_in_user_carries_is_bot_and_roles(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """loggedInUser is the user entity with isBot and roles (resources/teams/UserResource.java)."""
    body = get(legacy, LOGGED_IN_USER_PATH, client_token(idp_key)).json()
    assert body["isBot"] is False
    assert [role["name"] for role in body["roles"]] == [INGESTION_ROLE]


def test_user_lookup_by_name(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """GET /users/name/{name}: the user or a 404 (resources/teams/UserResource.java)."""
    token = client_token(idp_key)
    assert get(legacy, "/api/v1/users/name/alice", token).json()["name"] == "alice"
    assert_refused(get(legacy, "/api/v1/users/name/ghost", token), 404, "ghost not found")


# --- ConfigResource: what OM publishes without auth ---


def test_auth_config_publishes_only_the_client_fields(legacy: FakeOpenMetadata) -> None:
    """/system/config/auth: no publicKeyUrls (ConfigResource.getAuthConfig, resources/system/ConfigResource.java)."""
    body = get(legacy, AUTH_CONFIG_PATH).json()
    assert set(body) == {
        "provider", "providerName", "clientType", "enableSelfSignup", "jwtPrincipalClaims",
        "jwtPrincipalClaimsMapping", "clientId", "authority", "callbackUrl",
    }  # fmt: skip
    assert body["jwtPrincipalClaims"] == ["email", "preferred_username", "sub"]


def test_authorizer_config_publishes_only_principal_domain(idp_key: RSAKey) -> None:
    """/system/config/authorizer: principalDomain, not enforcePrincipalDomain (ConfigResource.java)."""
    with om(ENFORCED, idp_key) as server:
        assert get(server, AUTHORIZER_CONFIG_PATH).json() == {"principalDomain": DOMAIN}


def test_jwks_config_is_oms_own_key(legacy: FakeOpenMetadata) -> None:
    """/system/config/jwks: OM's own keys only (ConfigResource.getJWKSResponse, ConfigResource.java)."""
    keys = get(legacy, JWKS_PATH).json()["keys"]
    assert [key["kid"] for key in keys] == [legacy.om_kid]


def test_version_public_or_authenticated(legacy: FakeOpenMetadata, idp_key: RSAKey) -> None:
    """/system/version: authenticated unless public_version (EXCLUDED_ENDPOINTS, JwtFilter.java)."""
    assert get(legacy, VERSION_PATH).status_code == 401
    assert get(legacy, VERSION_PATH, client_token(idp_key)).json()["version"] == "1.6.0"
    public = OmVariant(**{**LEGACY.__dict__, "public_version": True})
    with om(public, idp_key) as server:
        assert get(server, VERSION_PATH).status_code == 200


def test_unreachable_public_key_url_is_skipped(idp_key: RSAKey) -> None:
    """A publicKeyUrls entry that fails is skipped, the next one tried (MultiUrlJwkProvider, MultiUrlJwkProvider.java)."""
    dead = OmVariant(
        **{**LEGACY.__dict__, "public_key_urls": (f"http://127.0.0.1:{free_port()}/x",)}
    )
    with FakeOpenMetadata(lambda: public_jwks(idp_key), "1.6.0", dead) as server:
        # The dead URL comes after the callable here; put it first to prove the skip.
        server.key_sources = (*dead.public_key_urls, *server.key_sources[:1])
        assert get(server, LOGGED_IN_USER_PATH, client_token(idp_key)).status_code == 200


def test_idp_token_naming_a_bot_user_is_not_bot_checked(
    legacy: FakeOpenMetadata, idp_key: RSAKey
) -> None:
    """Only an isBot claim triggers the stored-token check; the user entity decides isBot (JwtFilter.java, SubjectCache.java)."""
    response = get(legacy, LOGGED_IN_USER_PATH, client_token(idp_key, sub=BOT.name))
    assert response.status_code == 200
    assert response.json()["isBot"] is True
