"""The use case, pure: scopes as requested, policy, the broker, and the hand-out around them.

Nothing here imports FastAPI, Redis or an HTTP client (tests/unit/test_import_rules.py).
"""

__all__ = ["broker", "handout", "policy", "scopes"]
