"""Configuration: the broker YAML (schema and validation), process settings, reachability."""
