"""The provider registry: ``provider:`` in a profile names one of these."""

from __future__ import annotations

from service.upstream.base import Provider
from service.upstream.oidc import OidcProvider
from service.upstream.onelogin import OneLoginProvider

PROVIDERS: dict[str, Provider] = {p.name: p for p in (OidcProvider(), OneLoginProvider())}
