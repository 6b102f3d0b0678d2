"""The identity-provider side: discovery, providers and the client-credentials exchange."""
