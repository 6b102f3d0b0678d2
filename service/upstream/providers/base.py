"""What every provider shares; a provider file overrides only what differs for its issuer."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from service.config.schema import ProfileSpec


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an issuer endpoint, or ``None``; plain http only on loopback."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in {"https", "http"} or not host:
        return "must be an absolute https:// URL"
    if parts.username or parts.password:
        return "must not embed credentials"
    if parts.query or parts.fragment:
        return "must not carry a query or fragment"
    if parts.scheme == "http" and not _is_loopback(host):
        return "must use https:// (plain http is allowed for loopback only)"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Provider:
    """A generic OpenID Connect issuer: discovery under ``issuer`` or an explicit endpoint."""

    name = "oidc"

    def issuer(self, spec: ProfileSpec) -> str | None:
        """The issuer URL whose discovery document names the token endpoint."""
        return spec.issuer.rstrip("/") if spec.issuer else None

    def problems(self, spec: ProfileSpec) -> list[str]:
        """What is missing or wrong for this provider, as ``field: reason`` lines."""
        found: list[str] = []
        if not spec.issuer and not spec.token_endpoint:
            found.append("issuer: required (or token_endpoint) for provider 'oidc'")
        return found

    def token_params(self, spec: ProfileSpec, scopes: tuple[str, ...]) -> dict[str, str]:
        """Form parameters of the exchange, built additively so none drops another."""
        params = dict(spec.extra_params)
        if scopes:
            params["scope"] = " ".join(scopes)
        if spec.audience:
            params["audience"] = spec.audience
        if spec.resource:
            params["resource"] = spec.resource
        return params
