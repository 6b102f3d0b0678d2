"""Any OpenID Connect issuer: the shared behaviour, unchanged."""

from __future__ import annotations

from service.upstream.providers.base import Provider


class OidcProvider(Provider):
    """``provider: oidc``."""
