"""The use case, pure: scopes as requested, policy, and the broker that issues tokens.

Nothing here imports FastAPI, Redis or an HTTP client (tests/unit/test_import_rules.py).
"""
