"""The identity-provider side: discovery, providers and the client-credentials exchange."""

__all__ = ["discovery", "exchange", "minting", "providers", "resilience", "resilient", "tokens"]
