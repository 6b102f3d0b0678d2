"""Lifetime requests: a request that cannot succeed must not cost an issuer call.

The review's finding: ``min_ttl`` equal to the issuer's token lifetime made a fresh exchange
on every request, so a caller with a grant could drive issuer traffic up to its rate limit.
The one exchange allowed is the one that first teaches the broker a profile's lifetime.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
import redis

from tests.support.attack import Attack, basic
from tests.support.broker import running_broker

LIFETIME = 3600  # oidc-provider's access token lifetime in the session issuer


async def test_min_ttl_of_the_whole_lifetime_costs_one_exchange_in_all(attack: Attack) -> None:
    """Attack: min_ttl = the issuer's lifetime, repeated; one teaching exchange, then 0 calls."""
    answers = [await attack.v1({"profile": "ingestion", "min_ttl": LIFETIME}) for _ in range(5)]
    assert {(r.status_code, r.json()["error"]) for r in answers} == {(400, "invalid_request")}
    assert "3600" in answers[-1].json()["error_description"]
    assert attack.issuer_calls == 1


async def test_a_longer_min_ttl_is_refused_from_what_the_cache_proves(attack: Attack) -> None:
    """Attack: min_ttl above the lifetime of the cached token; refused without an exchange."""
    assert (await attack.v1({"profile": "ingestion"})).status_code == 200
    for min_ttl in (LIFETIME, LIFETIME + 1, "2h", "4h"):
        response = await attack.v1({"profile": "ingestion", "min_ttl": min_ttl})
        assert response.status_code == 400, response.text
    assert attack.issuer_calls == 1


async def test_the_lifetime_is_remembered_after_the_token_left_the_cache(
    attack: Attack, redis_url: str
) -> None:
    """Attack: wait for the token to expire and leave every cache, then ask again; 0 calls."""
    assert (await attack.v1({"profile": "ingestion"})).status_code == 200
    attack.clock.advance(LIFETIME + 60)
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()
    finally:
        client.close()
    refused = await attack.v1({"profile": "ingestion", "min_ttl": LIFETIME})
    assert refused.status_code == 400
    assert attack.issuer_calls == 1
    served = await attack.v1({"profile": "ingestion", "min_ttl": LIFETIME - 600})
    assert served.status_code == 200
    assert attack.issuer_calls == 2


async def test_another_replica_learns_the_lifetime_from_the_shared_cache(
    attack: Attack, redis_url: str
) -> None:
    """Attack: the impossible min_ttl at a second replica; the shared cache proves it, 0 calls."""
    assert (await attack.v1({"profile": "ingestion"})).status_code == 200
    # The same settings (Redis and cache key) as the first replica: a second replica.
    async with running_broker(attack.settings, clock=attack.clock) as second:
        for _ in range(3):
            response = await second.post(
                "/v1/token",
                json={"profile": "ingestion", "min_ttl": LIFETIME},
                headers={"Authorization": f"Bearer {attack.key()}"},
            )
            assert response.status_code == 400, response.text
    assert attack.issuer_calls == 1


async def test_min_ttl_above_max_ttl_never_reaches_the_issuer(attack: Attack) -> None:
    """Attack: min_ttl above the grant's max_ttl; 400 from policy, no exchange."""
    response = await attack.v1({"profile": "ingestion", "min_ttl": "5h"})
    assert response.status_code == 400
    assert attack.issuer_calls == 0


@pytest.mark.parametrize(
    "min_ttl",
    ["\u00b2", "\u0663", "\u0663h", "1e3", "-1", "9" * 40, "1h 30m", "4h\x00", "0x10", "", " "],
    ids=[
        "superscript",
        "arabic-digit",
        "arabic-hours",
        "exp",
        "negative",
        "huge",
        "space",
        "nul",
        "hex",
        "empty",
        "blank",
    ],
)
async def test_malformed_min_ttl_is_400_without_echo_on_both_endpoints(
    attack: Attack, min_ttl: str
) -> None:
    """Attack: malformed durations; 400 invalid_request, never echoed, no exchange."""
    echo = [min_ttl] if min_ttl.strip() else []
    listed = await attack.v1({"profile": "ingestion", "min_ttl": min_ttl}, echo=echo)
    form = await attack.form(
        f"grant_type=client_credentials&min_ttl={quote(min_ttl)}",
        headers=[basic("airflow", attack.key())],
        echo=echo,
    )
    assert listed.status_code == 400, listed.text
    assert form.status_code == 400, form.text
    assert attack.issuer_calls == 0


@pytest.mark.parametrize("min_ttl", [-1, 1.5, True, 10**30, None, [], {}])
async def test_mistyped_json_min_ttl_is_400(attack: Attack, min_ttl: object) -> None:
    """Attack: min_ttl of the wrong JSON type or range; 400, no exchange."""
    response = await attack.v1({"profile": "ingestion", "min_ttl": min_ttl})
    assert response.status_code == 400, response.text
    assert attack.issuer_calls == 0
