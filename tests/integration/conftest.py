"""Integration fixtures: session services come from tests/conftest.py, ``files`` from support."""

# A fixture defined in tests/support/broker.py; pytest finds it only when a conftest names it.
from tests.support.broker import files

__all__ = ["files"]
