# One-line docstrings name the behaviour and the OpenMetadata rule, which makes some long.
# ruff: noqa: E501
"""The pure parts of ``doctor openmetadata`` (service/runner/doctor.py): no network.

Principal derivation from claims and OM's published settings (``SecurityUtil``), and the
mapping of OM's answers (``loggedInUser``, ``permissions``) to the setting to change.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from service.runner.doctor import (
    INGESTION_OPERATIONS,
    INGESTION_RESOURCES,
    LoginContext,
    Principal,
    decode_jwt,
    derive_principal,
    ingestion_checks,
    interpret_login,
    remedy_for_401,
)

LEGACY = {"jwtPrincipalClaims": ["email", "preferred_username", "sub"]}
MAPPING = {**LEGACY, "jwtPrincipalClaimsMapping": ["username:sub", "email:email"]}
JWKS = "https://idp.example.com/jwks"


def context(principal: Principal | None = None, domain: str = "example.com") -> LoginContext:
    """A login context for a client-credentials token with sub ``svc``."""
    return LoginContext(
        principal or derive_principal({"sub": "svc"}, LEGACY, domain), domain, "k1", JWKS
    )


def permissions(access: str) -> dict[str, Any]:
    """A ``GET /v1/permissions`` ResultList giving ``access`` to every ingestion operation."""
    return {
        "data": [
            {
                "resource": resource,
                "permissions": [{"operation": op, "access": access} for op in INGESTION_OPERATIONS],
            }
            for resource in INGESTION_RESOURCES
        ]
    }


def segment(value: dict[str, Any]) -> str:
    """A base64url JSON segment."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_decode_jwt_reads_header_and_claims_and_refuses_opaque_tokens() -> None:
    """A JWT is three base64url JSON segments; an opaque token is not one (JwtFilter: 401 'Invalid token.')."""
    token = f"{segment({'kid': 'k1'})}.{segment({'sub': 'svc'})}.sig"
    assert decode_jwt(token) == ({"kid": "k1"}, {"sub": "svc"})
    assert decode_jwt("2YotnFZFEjr1zCsicMWpAA") is None
    assert decode_jwt("a.b.c") is None


def test_legacy_principal_is_the_first_present_claim_lowercased_before_at() -> None:
    """Legacy: first present jwtPrincipalClaims, before @, lowercased (SecurityUtil.findUserNameFromClaims)."""
    principal = derive_principal(
        {"sub": "x", "Preferred_Username": "Alice@corp.org"}, LEGACY, "example.com"
    )
    assert (principal.name, principal.claim, principal.email) == (
        "alice",
        "preferred_username",
        "alice@corp.org",
    )
    assert principal.domain == "corp.org"
    assert not principal.problem


def test_legacy_bare_sub_gets_principal_domain_for_email_but_no_domain() -> None:
    """A bare sub: email <sub>@<principalDomain>, yet the claim carries no domain (SecurityUtil.findEmailFromClaims)."""
    principal = derive_principal({"sub": "Svc-Client"}, LEGACY, "example.com")
    assert (principal.name, principal.email, principal.domain) == (
        "svc-client",
        "svc-client@example.com",
        "",
    )


def test_legacy_bare_sub_without_principal_domain_is_a_problem() -> None:
    """A bare claim and no principalDomain: OM cannot make an email, 401 (SecurityUtil.findEmailFromClaims)."""
    assert "principalDomain" in derive_principal({"sub": "svc"}, LEGACY, "").problem


def test_no_principal_claim_names_the_setting() -> None:
    """None of jwtPrincipalClaims present is a 401 (SecurityUtil.getFirstMatchJwtClaim): add 'sub'."""
    problem = derive_principal(
        {"client_id": "svc"}, {"jwtPrincipalClaims": ["email"]}, "x.org"
    ).problem
    assert "add 'sub' to authenticationConfiguration.jwtPrincipalClaims" in problem


def test_mapping_without_an_email_claim_is_a_problem() -> None:
    """jwtPrincipalClaimsMapping: the mapped email must contain @ (SecurityUtil.findEmailFromClaims)."""
    bare = derive_principal({"sub": "svc", "email": "svc"}, MAPPING, "example.com")
    absent = derive_principal({"sub": "svc"}, MAPPING, "example.com")
    good = derive_principal({"sub": "svc", "email": "svc@example.com"}, MAPPING, "example.com")
    assert "has without an @" in bare.problem
    assert "does not carry" in absent.problem
    assert "remove authenticationConfiguration.jwtPrincipalClaimsMapping" in absent.problem
    assert (good.name, good.domain, good.problem) == ("svc", "example.com", "")


def test_email_verified_false_is_a_problem() -> None:
    """email_verified: false is refused on every path (SecurityUtil.validateEmailVerifiedClaim)."""
    principal = derive_principal({"email": "a@example.com", "email_verified": False}, LEGACY, "")
    assert "email_verified: false" in principal.problem


def test_accepted_token_infers_public_key_urls_and_unenforced_domain() -> None:
    """200: OM found the key (publicKeyUrls, inferred) and enforces no domain a bare sub lacks (validateDomainEnforcement)."""
    accepted, lines = interpret_login(200, {"name": "svc", "email": "svc@example.com"}, context())
    text = "\n".join(line.line() for line in lines)
    assert accepted
    assert "ok   OM accepts the token: it is user 'svc'" in text
    assert "publicKeyUrls (AUTHENTICATION_PUBLIC_KEYS) (inferred" in text
    assert "enforcePrincipalDomain (AUTHORIZER_ENFORCE_PRINCIPAL_DOMAIN) is false (inferred" in text
    assert "FAIL" not in text


def test_accepted_under_another_name_infers_email_first() -> None:
    """200 for a user other than the legacy principal: OM resolved by email (JwtIdentityResolver, emailClaim)."""
    _, lines = interpret_login(200, {"name": "etl"}, context())
    assert any("emailClaim" in line.text and line.status == "note" for line in lines)


@pytest.mark.parametrize(
    ("message", "remedy"),
    [
        ("Token signing key not found in configured public keys", f"add {JWKS} to publicKeyUrls"),
        ("Invalid token. Token verification failed. Public key mismatch.", "stale or another JWKS"),
        ("Expired token!", "longer --min-ttl"),
        ("Not Authorized! Token not present", "Authorization header"),
        ("Invalid token.", "JWT access tokens"),
        (
            "Not Authorized! Email does not match the principal domain ['example.com']",
            "set enforcePrincipalDomain: false",
        ),
        ("Authentication failed: domain 'corp.org' not in allowed list", "enforcePrincipalDomain"),
        ("Authentication failed: email claim 'email' not found", "emailClaim is set"),
        ("Invalid JWT token, none of the following claims are present [email]", "add 'sub'"),
        ("The given token does not match the current bot's token!", "remove the isBot claim"),
        (
            "Authentication failed: email 'a@b.org' is not verified by the identity provider",
            "verified at the IdP",
        ),
    ],
)
def test_each_401_message_maps_to_its_setting(message: str, remedy: str) -> None:
    """Each JwtFilter / SecurityUtil / JwtIdentityResolver 401 message names the setting to change."""
    assert remedy in remedy_for_401(message, context())
    accepted, (line,) = interpret_login(401, {"code": 401, "message": message}, context())
    assert not accepted
    assert line.status == "FAIL"
    assert remedy in line.text


def test_unknown_user_404_says_to_create_it_with_principal_domain_email() -> None:
    """404 'user instance for X not found' (SubjectCache): create user X, email X@principalDomain, IngestionBotRole."""
    body = {"code": 404, "message": "user instance for svc not found"}
    accepted, (line,) = interpret_login(404, body, context())
    assert not accepted
    assert "create the user 'svc'" in line.text
    assert "email svc@example.com and the role IngestionBotRole" in line.text


def test_missing_ingestion_permissions_name_the_role() -> None:
    """notAllow on Create/EditAll (PermissionsResource) is a 403 for ingestion: grant IngestionBotRole."""
    lines = ingestion_checks({"name": "svc", "roles": []}, permissions("notAllow"))
    assert lines[0].status == "FAIL"
    assert "Create databaseService" in lines[0].text
    assert "the role IngestionBotRole" in lines[0].text
    allowed = ingestion_checks(
        {"name": "svc", "roles": [{"name": "IngestionBotRole"}]}, permissions("allow")
    )
    assert allowed[0].status == "ok"


def test_bot_and_non_bot_users_get_the_masking_note() -> None:
    """Non-bot users see masked connection secrets (DefaultAuthorizer.shouldMaskPasswords); bots do not."""
    human = ingestion_checks({"name": "svc", "isBot": False}, permissions("allow"))
    bot = ingestion_checks({"name": "svc", "isBot": True}, permissions("allow"))
    assert "is not a bot: OM masks service-connection secrets" in human[-1].text
    assert "is a bot user" in bot[-1].text
