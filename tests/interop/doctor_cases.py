"""OpenMetadata stand-in variants for the broker's real tokens, and what ``doctor`` must say.

The broker's profile ``ingestion`` gets client-credentials tokens from the session
oidc-provider: RS256 JWTs with a ``kid``, ``sub`` = the client id ``broker-basic``, no email.
Each :class:`DoctorCase` is one OpenMetadata configuration (``tests/interop/om_server.py``),
whether OpenMetadata accepts that token (``loggedInUser`` 200) and the fragments doctor's
output must hold (its remedy). Shared by tests/integration/test_doctor.py (doctor alone) and
tests/interop/test_metadata_cli.py (doctor, then the real ``metadata`` CLI).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tests.interop.om_server import INGESTION_ROLE, FakeOpenMetadata, OmUser, OmVariant

PRINCIPAL = "broker-basic"  # the token's `sub`: the client id
DOMAIN = "example.com"
USER = OmUser(name=PRINCIPAL, email=f"{PRINCIPAL}@{DOMAIN}")
JWKS_PLACEHOLDER = "{jwks_uri}"


@dataclass(frozen=True)
class DoctorCase:
    """One OpenMetadata configuration and doctor's expected verdict.

    ``trust_idp``: ``publicKeyUrls`` lists the IdP's JWKS. ``expected``: fragments of doctor's
    stdout (``{jwks_uri}`` stands for the IdP's JWKS URL). ``cli_status``: the status the
    ``metadata`` CLI meets when OM refuses it (None: it authenticates and stops at the stand-in's
    first 404).
    """

    variant: OmVariant
    accepted: bool
    expected: tuple[str, ...]
    trust_idp: bool = True
    cli_status: int | None = None

    @property
    def id(self) -> str:
        """The pytest id."""
        return self.variant.name

    def server(self, jwks_uri: str, version: str = "1.6.0") -> FakeOpenMetadata:
        """A started stand-in for this case, trusting ``jwks_uri`` when :attr:`trust_idp`."""
        keys = (jwks_uri,) if self.trust_idp else ()
        return FakeOpenMetadata(None, version, replace(self.variant, public_key_urls=keys))

    def fragments(self, jwks_uri: str) -> list[str]:
        """:attr:`expected` with the JWKS URL filled in."""
        return [text.replace(JWKS_PLACEHOLDER, jwks_uri) for text in self.expected]


ACCEPTED = f"ok   OM accepts the token: it is user '{PRINCIPAL}'"
CASES = (
    DoctorCase(
        OmVariant(name="legacy", principal_domain=DOMAIN, users=(USER,)),
        accepted=True,
        expected=(
            ACCEPTED,
            f"ok   principal: OM derives '{PRINCIPAL}' from claim 'sub'",
            f"' is published at {JWKS_PLACEHOLDER}; authenticationConfiguration.publicKeyUrls",
            "enforcePrincipalDomain (AUTHORIZER_ENFORCE_PRINCIPAL_DOMAIN) is false (inferred",
            f"ok   '{PRINCIPAL}' may Create/EditAll",
            f"note '{PRINCIPAL}' is not a bot: OM masks service-connection secrets",
        ),
    ),
    DoctorCase(
        OmVariant(
            name="claims-mapping",
            principal_domain=DOMAIN,
            jwt_principal_claims_mapping=("username:sub", "email:email"),
            users=(USER,),
        ),
        accepted=False,
        expected=(
            "FAIL principal: authenticationConfiguration.jwtPrincipalClaimsMapping maps email",
            "FAIL OM refuses the token: 401",
            "Add an email-shaped claim 'email' at the IdP, or remove",
        ),
        cli_status=401,
    ),
    DoctorCase(
        OmVariant(name="email-first", email_claim="email", principal_domain=DOMAIN, users=(USER,)),
        accepted=True,
        expected=(ACCEPTED,),
    ),
    DoctorCase(
        OmVariant(
            name="email-only",
            email_claim="email",
            jwt_principal_claims=(),
            principal_domain=DOMAIN,
            users=(USER,),
        ),
        accepted=False,
        expected=(
            "FAIL OM refuses the token: 401 'Authentication failed: email claim 'email' not found'",
            "inferred: authenticationConfiguration.emailClaim is set",
            "add one at the IdP",
        ),
        cli_status=401,
    ),
    DoctorCase(
        OmVariant(
            name="enforce-principal-domain",
            principal_domain=DOMAIN,
            enforce_principal_domain=True,
            users=(USER,),
        ),
        accepted=False,
        expected=(
            f"note the claim carries no domain, not the published principalDomain '{DOMAIN}'",
            "FAIL OM refuses the token: 401 'Not Authorized! Email does not match the principal",
            "inferred: authorizerConfiguration.enforcePrincipalDomain",
            "set enforcePrincipalDomain: false, or add an email claim <name>@example.com",
        ),
        cli_status=401,
    ),
    DoctorCase(
        OmVariant(name="unknown-user", principal_domain=DOMAIN, users=()),
        accepted=False,
        expected=(
            f"FAIL OM authenticates the token but knows no user '{PRINCIPAL}': 404",
            f"create the user '{PRINCIPAL}' in OM",
            f"with email {PRINCIPAL}@{DOMAIN} and the role {INGESTION_ROLE}",
        ),
        cli_status=404,
    ),
    DoctorCase(
        OmVariant(name="bot-user", principal_domain=DOMAIN, users=(replace(USER, is_bot=True),)),
        accepted=True,
        expected=(ACCEPTED, f"note '{PRINCIPAL}' is a bot user: OM shows it service-connection"),
    ),
    DoctorCase(
        OmVariant(
            name="no-ingestion-role", principal_domain=DOMAIN, users=(replace(USER, roles=()),)
        ),
        accepted=True,
        expected=(
            ACCEPTED,
            f"FAIL OM would refuse ingestion (403) for '{PRINCIPAL}' (roles [])",
            "Create databaseService",
            f"give user '{PRINCIPAL}' the role {INGESTION_ROLE}",
        ),
        # The CLI authenticates; its first write would be the 403, but the stand-in 404s the
        # first entity lookup, which ends the run before any write.
    ),
    DoctorCase(
        OmVariant(name="unknown-kid", principal_domain=DOMAIN, users=(USER,)),
        accepted=False,
        trust_idp=False,
        expected=(
            "FAIL OM refuses the token: 401 'Token signing key not found",
            "(AUTHENTICATION_PUBLIC_KEYS) does not list the issuer's JWKS",
            f"add {JWKS_PLACEHOLDER} to publicKeyUrls",
        ),
        cli_status=401,
    ),
)
