"""Ingestion token broker: OIDC client-credentials tokens for OpenMetadata runners."""

__version__ = "0.1.0"
