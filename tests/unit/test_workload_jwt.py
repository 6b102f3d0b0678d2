"""Workload JWT verification as pure logic: claims, key fit, leeway and remembered tokens."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from service.callers.jwt import (
    PublicKey,
    ReplayRefused,
    WorkloadAuthenticator,
    check_claims,
    key_matches,
    looks_like_jwt,
)
from service.callers.replay import UsedJtis
from service.config.validated import TrustedIssuer, WorkloadBinding
from service.errors import CacheUnavailable, InvalidClient
from service.models import Caller

NOW = 1_800_000_000.0
RSA = RSAKey.generate_key(2048, parameters={"kid": "r1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "e1"})


def issuer(**overrides: object) -> TrustedIssuer:
    """A kubernetes trusted issuer with a 30 s leeway (replay allowed, as the loader makes it)."""
    values: dict[str, object] = {
        "name": "cluster",
        "kind": "kubernetes",
        "issuer": "https://k8s.example.com",
        "audience": "token-broker",
        "jwks_url": None,
        "jwks_file": None,
        "ca_file": None,
        "algorithms": ("RS256", "ES256"),
        "leeway": 30,
        "required_claims": {},
        "replay": "allow",
    }
    values.update(overrides)
    return TrustedIssuer(**values)  # type: ignore[arg-type]


def claims(**overrides: object) -> dict[str, object]:
    """Projected service-account token claims valid at NOW."""
    base: dict[str, object] = {
        "iss": "https://k8s.example.com",
        "aud": ["token-broker"],
        "sub": "system:serviceaccount:ingestion:runner",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 600,
        "kubernetes.io": {"namespace": "ingestion", "serviceaccount": {"name": "runner"}},
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        ({"exp": NOW - 29}, True),  # within leeway
        ({"exp": NOW - 31}, False),
        ({"nbf": NOW + 29}, True),
        ({"nbf": NOW + 31}, False),
        ({"iat": NOW + 31}, False),
        ({"exp": "soon"}, False),
        ({"exp": True}, False),
        ({"aud": "token-broker"}, True),  # a single string audience
        ({"aud": ["other", "token-broker"]}, True),
        ({"aud": ["other"]}, False),
        ({"aud": None}, False),
    ],
)
def test_time_and_audience_checks_honour_the_leeway(overrides: dict[str, object], ok: bool) -> None:
    """exp/nbf/iat allow the issuer's leeway and no more; aud must contain the broker's."""
    if ok:
        check_claims(issuer(), claims(**overrides), NOW)
    else:
        with pytest.raises(InvalidClient):
            check_claims(issuer(), claims(**overrides), NOW)


def test_required_claims_must_match_exactly() -> None:
    """An issuer's required_claims refuse tokens without the exact value."""
    strict = issuer(kind="generic", required_claims={"repository_owner": "acme"})
    check_claims(strict, claims(repository_owner="acme"), NOW)
    with pytest.raises(InvalidClient, match="requires"):
        check_claims(strict, claims(repository_owner="acme-evil"), NOW)


def test_key_must_fit_the_algorithm() -> None:
    """RS* needs an RSA key, ES256 a P-256 EC key; anything else is refused."""
    assert key_matches(RSA, "RS256")
    assert key_matches(RSA, "PS256")
    assert key_matches(EC, "ES256")
    assert not key_matches(EC, "ES384")
    assert not key_matches(EC, "RS256")
    assert not key_matches(RSA, "ES256")
    assert not key_matches(RSA, "HS256")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("eyJh.eyJi.c2ln", True),
        ("eyJh.eyJi.", True),
        ("eyJh..c2ln", False),
        ("tbk_ab12cd34_secret", False),
        ("a.b.c.d", False),
        ("eyJh.eyJi.c2l+", False),
    ],
)
def test_jwt_shape(value: str, expected: bool) -> None:
    """Only three base64url parts with a header and payload look like a JWT."""
    assert looks_like_jwt(value) is expected


class CountingKeys:
    """A KeySource over fixed keys that counts lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    async def key(self, issuer: TrustedIssuer, kid: str | None, alg: str) -> PublicKey:
        """The fixed key of ``kid``."""
        del issuer, alg
        self.lookups += 1
        found: dict[str, PublicKey] = {"r1": RSA, "e1": EC}
        return found[kid or ""]


async def test_verified_tokens_are_remembered_until_they_expire() -> None:
    """A second presentation skips verification; after exp it is verified (and refused) again."""
    now = [NOW]
    keys = CountingKeys()
    auth = WorkloadAuthenticator(
        {"cluster": issuer()},
        [
            WorkloadBinding(
                "pods",
                "cluster",
                "system:serviceaccount:ingestion:runner",
                {("kubernetes.io", "namespace"): "ingestion"},
            )
        ],
        {"pods": Caller("pods")},
        keys,
        clock=lambda: now[0],
    )
    token = jwt.encode({"alg": "RS256", "kid": "r1"}, claims(), RSA, algorithms=["RS256"])
    first = await auth.authenticate(token)
    second = await auth.authenticate(token)
    assert first == second
    assert first.name == "pods"
    assert first.credential == "jwt:cluster"
    assert keys.lookups == 1
    now[0] = NOW + 700
    with pytest.raises(InvalidClient, match="expired"):
        await auth.authenticate(token)
    assert keys.lookups == 2


class WithdrawableKeys:
    """A KeySource whose issuer may stop publishing its keys."""

    def __init__(self) -> None:
        self.published: dict[str, PublicKey] = {"r1": RSA, "e1": EC}
        self.lookups = 0

    async def key(self, issuer: TrustedIssuer, kid: str | None, alg: str) -> PublicKey:
        """The published key of ``kid``, else the refusal JwksKeySource gives."""
        del issuer, alg
        self.lookups += 1
        found = self.published.get(kid or "")
        if found is None:
            raise InvalidClient("workload token is signed by a key its issuer does not publish")
        return found


def generic(**overrides: object) -> TrustedIssuer:
    """A generic issuer with the loader's defaults: replay refused, jti required."""
    return issuer(kind="generic", replay="refuse", **overrides)


def authenticator(
    trusted: TrustedIssuer, keys: WithdrawableKeys, now: list[float], **kwargs: object
) -> WorkloadAuthenticator:
    """Caller ``ci`` bound to the subject of ``claims()`` on ``trusted``."""
    binding = WorkloadBinding("ci", trusted.name, "system:serviceaccount:ingestion:runner", {})
    return WorkloadAuthenticator(
        {trusted.name: trusted},
        [binding],
        {"ci": Caller("ci")},
        keys,
        clock=lambda: now[0],
        **kwargs,  # type: ignore[arg-type]
    )


def signed(**overrides: object) -> str:
    """``claims(**overrides)`` signed with the RSA key ``r1``."""
    return jwt.encode({"alg": "RS256", "kid": "r1"}, claims(**overrides), RSA, algorithms=["RS256"])


async def test_a_withdrawn_key_stops_vouching_for_remembered_tokens() -> None:
    """Attack: a token signed by a revoked key lives on in the memo until its exp (here 600 s)."""
    now, keys = [NOW], WithdrawableKeys()
    auth = authenticator(issuer(), keys, now, remember_for=60.0)
    token = signed()
    await auth.authenticate(token)
    del keys.published["r1"]
    await auth.authenticate(token)  # within remember_for: the memo answers
    assert keys.lookups == 1
    now[0] = NOW + 61
    with pytest.raises(InvalidClient, match="does not publish"):
        await auth.authenticate(token)


async def test_replay_refuse_is_checked_on_every_presentation_even_when_remembered() -> None:
    """Attack: replaying a verified assertion, served from the memo, is refused all the same."""
    now, keys = [NOW], WithdrawableKeys()
    auth = authenticator(generic(), keys, now)
    token = signed(jti="a1")
    assert (await auth.authenticate(token)).name == "ci"
    with pytest.raises(ReplayRefused, match="already used"):
        await auth.authenticate(token)
    assert keys.lookups == 1
    # Another token with the same jti is the same assertion to the issuer.
    with pytest.raises(ReplayRefused, match="already used"):
        await auth.authenticate(signed(jti="a1", iat=NOW - 5))


@pytest.mark.parametrize(
    ("jti", "reason"),
    [
        (None, "no jti"),
        (12345, "not a string"),
        ("", "not a string"),
        ("J" * 257, "not a string of 1 to 256"),
    ],
)
async def test_missing_or_malformed_jti_is_refused_without_echoing_it(
    jti: object, reason: str
) -> None:
    """A replay: refuse issuer's token without a usable jti is refused; the jti is never echoed."""
    auth = authenticator(generic(), WithdrawableKeys(), [NOW])
    token = signed() if jti is None else signed(jti=jti)
    with pytest.raises(ReplayRefused, match=reason) as info:
        await auth.authenticate(token)
    assert "JJJJ" not in info.value.description
    assert "12345" not in info.value.description


async def test_require_jti_false_accepts_tokens_without_jti_each_time() -> None:
    """require_jti: false: a jti-less token has nothing to track and is accepted repeatedly."""
    auth = authenticator(generic(require_jti=False), WithdrawableKeys(), [NOW])
    token = signed()
    for _ in range(3):
        assert (await auth.authenticate(token)).name == "ci"
    with_jti = signed(jti="b2")
    await auth.authenticate(with_jti)
    with pytest.raises(ReplayRefused):
        await auth.authenticate(with_jti)


async def test_local_jti_store_refuses_new_assertions_when_full_rather_than_forget() -> None:
    """Attack: flooding the in-process store to evict a used jti; it refuses (503) instead."""
    now = [NOW]
    store = UsedJtis(capacity=2, clock=lambda: now[0])
    assert await store.first_use("ci", "a", NOW + 10)
    assert await store.first_use("ci", "b", NOW + 100)
    assert not await store.first_use("ci", "a", NOW + 10)
    with pytest.raises(CacheUnavailable):
        await store.first_use("ci", "c", NOW + 100)
    assert not await store.first_use("ci", "a", NOW + 10)  # still remembered
    now[0] = NOW + 10  # a's token has expired: its room is free again
    assert await store.first_use("ci", "c", NOW + 100)
    assert not await store.first_use("ci", "b", NOW + 100)
    # The same jti from another issuer is another assertion: refused for room, not as a replay.
    with pytest.raises(CacheUnavailable):
        await store.first_use("other-issuer", "b", NOW + 100)


async def test_local_jti_store_keeps_an_expired_tokens_jti_at_least_a_second() -> None:
    """A jti whose token's life is already over is still kept for the 1 s minimum."""
    now = [NOW]
    store = UsedJtis(clock=lambda: now[0])
    assert await store.first_use("ci", "late", NOW - 5)
    now[0] = NOW + 0.9
    assert not await store.first_use("ci", "late", NOW - 5)
    now[0] = NOW + 1.0
    assert await store.first_use("ci", "late", NOW - 5)
