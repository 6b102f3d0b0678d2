"""The provider registry: ``provider:`` in a profile names one of these."""

from __future__ import annotations

from service.upstream.providers.base import Provider
from service.upstream.providers.broker import BrokerProvider
from service.upstream.providers.oidc import OidcProvider
from service.upstream.providers.onelogin import OneLoginProvider

__all__ = ["PROVIDERS", "Provider"]

PROVIDERS: dict[str, Provider] = {
    p.name: p for p in (OidcProvider(), OneLoginProvider(), BrokerProvider())
}
