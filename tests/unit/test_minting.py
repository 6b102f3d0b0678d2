"""Minted tokens: what the broker signs itself, checked with a standard JOSE library."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import KeySet

from service.upstream.minting import MintRequest, SigningKey, load_signing_key, mint, public_jwks

NOW = 1_800_000_000.0


def _pem(bits: int = 2048) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def signing() -> SigningKey:
    """One 2048-bit key for the module."""
    return load_signing_key(_pem(), "broker-1")


def test_a_minted_token_verifies_against_the_published_jwks(signing: SigningKey) -> None:
    """The JWT verifies with joserfc against public_jwks, by kid, as RS256."""
    issued = mint(signing, MintRequest("https://tb", "ingestion-airflow", 3600), now=NOW)
    keys = KeySet.import_key_set(public_jwks([signing]))  # type: ignore[arg-type]
    token = jwt.decode(issued.access_token, keys, algorithms=["RS256"])
    assert token.header == {"alg": "RS256", "typ": "JWT", "kid": "broker-1"}
    assert token.claims["sub"] == "ingestion-airflow"
    assert token.claims["exp"] - token.claims["iat"] == 3600
    assert issued.expires_at - issued.issued_at == 3600


def test_claims_carry_principal_email_audience_labels_and_no_isbot(signing: SigningKey) -> None:
    """email, aud, scope and the run labels are claims; isBot never is."""
    request = MintRequest(
        "https://tb", "ingestion-airflow", 600, email="ingestion-airflow@acme.com",
        audience="openmetadata", scopes=("read",), labels={"dag_id": "d", "run_id": "r"},
    )  # fmt: skip
    claims = jwt.decode(mint(signing, request, now=NOW).access_token, signing.key).claims
    assert claims["email"] == "ingestion-airflow@acme.com"
    assert claims["aud"] == "openmetadata"
    assert claims["run"] == {"dag_id": "d", "run_id": "r"}
    assert "isBot" not in claims
    assert claims["nbf"] == claims["iat"] == int(NOW)


def test_every_token_has_its_own_jti(signing: SigningKey) -> None:
    """Two hand-outs, two jtis and two tokens: a minted token is never shared."""
    request = MintRequest("https://tb", "p", 60)
    first, second = (mint(signing, request, now=NOW) for _ in range(2))
    assert first.access_token != second.access_token
    decoded = [jwt.decode(t.access_token, signing.key).claims["jti"] for t in (first, second)]
    assert decoded[0] != decoded[1]


def test_jwks_holds_public_parts_only(signing: SigningKey) -> None:
    """The published set has n, e, kid, alg, use: never d, p, q or any private part."""
    (published,) = public_jwks([signing])["keys"]
    assert set(published) == {"kty", "n", "e", "kid", "alg", "use"}
    assert published["use"] == "sig"
    assert published["alg"] == "RS256"


@pytest.mark.parametrize(
    ("material", "message"),
    [
        (b"not a pem", "not a PEM RSA private key"),
        ("EC", "not a PEM RSA private key"),
        ("RSA1024", "at least 2048"),
        ("PUBLIC", "public key cannot sign"),
    ],
)
def test_keys_that_cannot_sign_for_openmetadata_are_refused(material: object, message: str) -> None:
    """EC, short RSA, public-only and garbage keys are refused without quoting the PEM."""
    if material == "EC":
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    elif material == "RSA1024":
        pem = _pem(1024)
    elif material == "PUBLIC":
        pem = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    else:
        assert isinstance(material, bytes)
        pem = material
    with pytest.raises(ValueError, match=message) as info:
        load_signing_key(pem, "k")
    assert "BEGIN" not in str(info.value)


def test_a_kid_is_a_plain_name(signing: SigningKey) -> None:
    """A kid with spaces or quotes is refused: it is published and sent in every header."""
    with pytest.raises(ValueError, match="kid must be"):
        load_signing_key(_pem(), 'bad "kid"')
    assert "BEGIN" not in repr(signing)
