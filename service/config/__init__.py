"""Configuration: the broker YAML (schema, validation, secrets), settings, reachability.

The face names modules rather than re-exporting from them: importing ``schema`` (as the
upstream providers do) must not load the loader, which imports those providers.
"""

__all__ = ["load", "reachability", "schema", "secrets", "settings", "validated"]
