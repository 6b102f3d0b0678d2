"""The broker itself as the issuer: tokens it signs with its ``signing:`` keys, no exchange."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.upstream.providers.base import Provider

if TYPE_CHECKING:
    from service.config.schema import ProfileSpec

# What only an exchange uses: set on a broker profile it would do nothing, which is a mistake
# the operator should hear about rather than discover.
_EXCHANGE_ONLY = (
    "issuer",
    "token_endpoint",
    "subdomain",
    "region",
    "client_id",
    "client_secret",
    "private_key",
    "key_id",
    "resource",
)


class BrokerProvider(Provider):
    """``provider: broker``: minted tokens; needs ``signing:`` and a principal per grant."""

    name = "broker"

    def issuer(self, spec: ProfileSpec) -> str | None:
        """No upstream issuer: the broker's own is ``signing.issuer``."""
        del spec
        return None

    def problems(self, spec: ProfileSpec) -> list[str]:
        """Exchange settings have no meaning here."""
        found = [
            f"{field}: not used with provider 'broker' (the broker signs these tokens); remove it"
            for field in _EXCHANGE_ONLY
            if getattr(spec, field) is not None
        ]
        if spec.extra_params:
            found.append("extra_params: not used with provider 'broker'; remove it")
        return found

    def token_params(self, spec: ProfileSpec, scopes: tuple[str, ...]) -> dict[str, str]:
        """Never exchanged: no form parameters."""
        del spec, scopes
        return {}
