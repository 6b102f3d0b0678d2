"""OneLogin: the issuer derives from the account subdomain.

OIDC v2 issuers are ``https://<subdomain>.onelogin.com/oidc/2`` in every region; without a
subdomain, ``region`` selects the legacy v1 issuer of that region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.upstream.providers.base import Provider

if TYPE_CHECKING:
    from service.config.schema import ProfileSpec

_LEGACY = {
    "us": "https://openid-connect.onelogin.com/oidc",
    "eu": "https://openid-connect-eu.onelogin.com/oidc",
}


class OneLoginProvider(Provider):
    """``provider: onelogin``."""

    name = "onelogin"

    def issuer(self, spec: ProfileSpec) -> str | None:
        """Explicit issuer, else the subdomain's v2 issuer, else the region's v1 issuer."""
        if spec.issuer:
            return spec.issuer.rstrip("/")
        if spec.subdomain:
            return f"https://{spec.subdomain}.onelogin.com/oidc/2"
        if spec.region:
            return _LEGACY[spec.region]
        return None

    def problems(self, spec: ProfileSpec) -> list[str]:
        """OneLogin needs something to find the issuer by."""
        if not (spec.issuer or spec.subdomain or spec.region or spec.token_endpoint):
            return ["subdomain: required (or issuer) for provider 'onelogin'"]
        return []
