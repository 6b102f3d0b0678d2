"""Workload JWT verification as pure logic: claims, key fit, leeway and remembered tokens."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from service.callers.jwt import (
    PublicKey,
    WorkloadAuthenticator,
    check_claims,
    key_matches,
    looks_like_jwt,
)
from service.config import TrustedIssuer, WorkloadBinding
from service.errors import InvalidClient
from service.models import Caller

NOW = 1_800_000_000.0
RSA = RSAKey.generate_key(2048, parameters={"kid": "r1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "e1"})


def issuer(**overrides: object) -> TrustedIssuer:
    """A kubernetes trusted issuer with a 30 s leeway."""
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
