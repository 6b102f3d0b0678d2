"""Policy: deny by default, scopes narrow, max_ttl bounds min_ttl."""

from __future__ import annotations

import pytest

from service.core.policy import GrantRule, Policy
from service.errors import AccessDenied, InvalidRequest, ScopeNotGranted
from service.models import Caller, TokenRequest

POLICY = Policy(
    {
        "airflow": {
            "ingestion": GrantRule("ingestion", frozenset({"read", "write"}), max_ttl=14400),
        },
        "pods": {
            "ingestion": GrantRule(
                "ingestion", frozenset({"read"}), profile_scopes=frozenset({"read", "write"})
            )
        },
    }
)
AIRFLOW = Caller("airflow")


def test_no_grant_is_denied() -> None:
    """A profile the caller holds no grant for is refused."""
    with pytest.raises(AccessDenied):
        POLICY.decide(AIRFLOW, TokenRequest(profile="admin"))


def test_unknown_caller_is_denied() -> None:
    """A caller absent from the policy gets nothing."""
    with pytest.raises(AccessDenied):
        POLICY.decide(Caller("stranger"), TokenRequest(profile="ingestion"))


def test_default_scopes_are_the_whole_grant_sorted() -> None:
    """No scopes requested means every scope of the grant, in a stable order."""
    grant = POLICY.decide(AIRFLOW, TokenRequest(profile="ingestion"))
    assert grant.scopes == ("read", "write")
    assert grant.max_ttl == 14400


def test_subset_of_scopes_is_granted_deduplicated() -> None:
    """Requested scopes inside the grant are granted as a sorted set."""
    grant = POLICY.decide(AIRFLOW, TokenRequest(profile="ingestion", scopes=("write", "write")))
    assert grant.scopes == ("write",)


def test_scope_escalation_is_refused_naming_the_scope() -> None:
    """A scope beyond the grant raises invalid_scope naming it."""
    with pytest.raises(ScopeNotGranted, match="write") as info:
        POLICY.decide(Caller("pods"), TokenRequest(profile="ingestion", scopes=("read", "write")))
    assert info.value.status == 403
    assert info.value.error == "invalid_scope"


def test_scope_refusal_never_repeats_unknown_scopes() -> None:
    """Requested scopes the profile does not define are counted, never echoed."""
    pasted = "tbk_0a1b2c3d_Zm9vYmFyYmF6cXV4cXV1eA"
    with pytest.raises(ScopeNotGranted) as info:
        POLICY.decide(
            Caller("pods"), TokenRequest(profile="ingestion", scopes=("write", pasted, "x"))
        )
    assert info.value.description == (
        "scopes not granted to caller 'pods': write (and 2 scopes unknown to the profile)"
    )
    with pytest.raises(ScopeNotGranted, match=r"1 scope unknown to the profile$") as info:
        POLICY.decide(Caller("pods"), TokenRequest(profile="ingestion", scopes=(pasted,)))
    assert pasted not in info.value.description


def test_min_ttl_above_max_ttl_is_invalid() -> None:
    """A caller cannot demand a longer life than its grant allows."""
    with pytest.raises(InvalidRequest, match="max_ttl"):
        POLICY.decide(AIRFLOW, TokenRequest(profile="ingestion", min_ttl=14401))
