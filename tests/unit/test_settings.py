"""Settings: cross-field rules are checked when the settings are built."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config.settings import Settings


def test_waiters_must_outlast_the_upstream_deadline() -> None:
    """A wait timeout not above the exchange deadline is refused, naming both variables."""
    with pytest.raises(ValidationError, match="TOKEN_BROKER_WAIT_TIMEOUT_SECONDS must exceed"):
        Settings(wait_timeout_seconds=10, upstream_deadline_seconds=10)
    assert (
        Settings(wait_timeout_seconds=11, upstream_deadline_seconds=10).wait_timeout_seconds == 11
    )


def test_defaults_keep_a_short_renewed_lease_and_patient_waiters() -> None:
    """Defaults: a 5 s lease (renewed by its holder), waiters beyond the 20 s deadline."""
    settings = Settings()
    assert settings.lock_lease_seconds == 5.0
    assert settings.wait_timeout_seconds > settings.upstream_deadline_seconds
