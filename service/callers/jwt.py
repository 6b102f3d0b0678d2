"""Workload JWTs as caller credentials: Kubernetes service-account tokens and other issuers.

Protocol logic only: parse the compact JWT, pick the trusted issuer named by ``iss``, refuse
anything but the issuer's asymmetric algorithms, verify the signature with the key that
``KeySource`` supplies for the ``kid``, check ``exp``/``nbf``/``iat`` with the issuer's small
leeway and that ``aud`` contains the broker's audience, then bind the claims to exactly one
configured caller. Fetching keys is the only I/O and lives behind ``KeySource`` (``jwks.py``).

Every refusal is an ``InvalidClient`` whose description says what was wrong with the token
and never repeats any part of it.

A token verified once is remembered (by its SHA-256) until its ``exp``, but for no longer
than ``remember_for`` (the key cache's age): a key its issuer withdrew from the JWKS must
stop vouching for tokens, also for those already verified, once the broker has seen the
new key set.

An issuer with ``replay: refuse`` has each ``jti`` accepted once: the check comes after the
signature, the claims and the caller binding (a forged token must not use up a ``jti``) and
runs on every presentation, remembered or not. Its refusals are ``ReplayRefused``, which the
OAuth2 facade turns into ``invalid_grant``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from service.callers.replay import UsedJtis
from service.errors import InvalidClient
from service.models import Caller

if TYPE_CHECKING:
    from service.config.validated import TrustedIssuer, WorkloadBinding

PublicKey = RSAKey | ECKey
MAX_TOKEN_BYTES = 16_384
MAX_JTI_CHARS = 256
_MAX_REMEMBERED = 10_000
_K8S = "kubernetes.io"
# The key type and curve each accepted algorithm needs: a key of another type is refused
# before any signature check, which closes the algorithm-confusion family of attacks.
KEY_TYPES: Mapping[str, tuple[str, str | None]] = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), ("RSA", None)),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
}


class KeySource(Protocol):
    """Where the public keys of trusted issuers come from."""

    async def key(self, issuer: TrustedIssuer, kid: str | None, alg: str) -> PublicKey:
        """The issuer's key for ``kid`` usable with ``alg``; ``InvalidClient`` if none."""


class JtiLedger(Protocol):
    """Where used ``jti`` values are recorded (``callers.replay.UsedJtis``)."""

    async def first_use(self, issuer: str, jti: str, until: float) -> bool:
        """Record ``jti`` of ``issuer`` until ``until``; False if it was recorded before."""


class ReplayRefused(InvalidClient):
    """A verified token its issuer's ``replay: refuse`` rule turns away: reused, or no ``jti``."""


@dataclass(frozen=True)
class _Verified:
    caller: Caller
    issuer: TrustedIssuer
    exp: float
    jti: object


def looks_like_jwt(value: str) -> bool:
    """Whether ``value`` has the shape of a compact JWS (three base64url parts)."""
    parts = value.split(".")
    return len(parts) == 3 and all(parts[:2]) and all(_is_b64url(p) for p in parts)  # noqa: PLR2004


def _is_b64url(part: str) -> bool:
    return all(c.isalnum() or c in "-_" for c in part) and part.isascii()


def _b64_json(part: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidClient(f"workload token {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise InvalidClient(f"workload token {what} is not a JSON object")
    return value


def key_matches(key: PublicKey, alg: str) -> bool:
    """Whether ``key`` is of the type (and curve) that ``alg`` needs."""
    kty, curve = KEY_TYPES.get(alg, ("", None))
    if key.key_type != kty:
        return False
    return curve is None or (isinstance(key, ECKey) and key.curve_name == curve)


def claim(claims: Mapping[str, Any], path: Iterable[str]) -> object:
    """The claim at ``path`` (nested objects), or ``None``."""
    value: object = claims
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def check_claims(issuer: TrustedIssuer, claims: Mapping[str, Any], now: float) -> None:
    """Time, audience and the issuer's required claims; raises ``InvalidClient``."""
    _check_times(claims, now, issuer.leeway)
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or issuer.audience not in audiences:
        raise InvalidClient("workload token audience does not include this broker")
    for name, expected in issuer.required_claims.items():
        if claims.get(name) != expected:
            raise InvalidClient(f"workload token lacks a claim its issuer requires ({name})")
    if issuer.kind == "kubernetes":
        _check_kubernetes(claims)


def _check_times(claims: Mapping[str, Any], now: float, leeway: int) -> None:
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise InvalidClient("workload token has no exp claim; only expiring tokens are accepted")
    if now > exp + leeway:
        raise InvalidClient("workload token has expired")
    for name, what in (("nbf", "is not valid yet"), ("iat", "was issued in the future")):
        value = claims.get(name)
        if value is None:
            continue
        if not _is_number(value):
            raise InvalidClient(f"workload token has a non-numeric {name} claim")
        if value > now + leeway:
            raise InvalidClient(f"workload token {what}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_kubernetes(claims: Mapping[str, Any]) -> None:
    namespace = claim(claims, (_K8S, "namespace"))
    account = claim(claims, (_K8S, "serviceaccount", "name"))
    if not isinstance(namespace, str) or not isinstance(account, str):
        raise InvalidClient("workload token is not a Kubernetes service-account token")
    # The API server writes both; disagreement means the token was not minted by it.
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{account}":
        raise InvalidClient("workload token subject does not match its service account")


class WorkloadAuthenticator:
    """Maps verified workload JWTs to configured callers."""

    def __init__(
        self,
        issuers: Mapping[str, TrustedIssuer],
        bindings: Iterable[WorkloadBinding],
        callers: Mapping[str, Caller],
        keys: KeySource,
        *,
        used_jtis: JtiLedger | None = None,
        remember_for: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_url = {issuer.issuer: issuer for issuer in issuers.values()}
        self._bindings: dict[tuple[str, str], list[WorkloadBinding]] = {}
        for binding in bindings:
            self._bindings.setdefault((binding.issuer, binding.subject), []).append(binding)
        self._callers = callers
        self._keys = keys
        self._used_jtis = used_jtis if used_jtis is not None else UsedJtis(clock=clock)
        self._remember_for = remember_for
        self._clock = clock
        self._verified: dict[bytes, tuple[_Verified, float]] = {}

    async def authenticate(self, token: str) -> Caller:
        """The caller ``token`` proves to be; ``InvalidClient`` says why not."""
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidClient("workload token is too large")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        remembered = self._verified.get(digest)
        if remembered is not None and now < remembered[1]:
            verified = remembered[0]
        else:
            verified = await self._verify(token, now)
            self._remember(digest, verified, now)
        await self._check_replay(verified)
        return verified.caller

    async def _check_replay(self, verified: _Verified) -> None:
        issuer = verified.issuer
        if issuer.replay == "allow":
            return
        jti = verified.jti
        if jti is None:
            if issuer.require_jti:
                raise ReplayRefused(
                    "workload token has no jti claim; its issuer's tokens are accepted once each"
                )
            return  # nothing to tell one presentation from the next
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise ReplayRefused(
                f"workload token jti claim is not a string of 1 to {MAX_JTI_CHARS} characters"
            )
        # Until the last moment the token itself would still be accepted.
        if not await self._used_jtis.first_use(issuer.name, jti, verified.exp + issuer.leeway):
            raise ReplayRefused("workload token was already used (its jti was seen before)")

    async def _verify(self, token: str, now: float) -> _Verified:
        if not looks_like_jwt(token):
            raise InvalidClient("workload token is not a compact JWT")
        header_part, payload_part, _ = token.split(".")
        header = _b64_json(header_part, "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidClient("unsigned workload tokens are not accepted")
        if "crit" in header:
            raise InvalidClient("workload token has critical header parameters")
        # Read unverified only to choose which issuer's keys to verify with.
        unverified = _b64_json(payload_part, "payload")
        issuer = self._by_url.get(str(unverified.get("iss", "")).rstrip("/"))
        if issuer is None:
            raise InvalidClient("workload token issuer is not trusted")
        if alg not in issuer.algorithms:
            raise InvalidClient("workload token algorithm is not allowed for its issuer")
        kid = header.get("kid")
        key = await self._keys.key(issuer, kid if isinstance(kid, str) else None, alg)
        if not key_matches(key, alg):
            raise InvalidClient("workload token key does not fit its algorithm")
        try:
            verified = jws.deserialize_compact(token, key, algorithms=[alg])
        except JoseError:
            raise InvalidClient("workload token signature is invalid") from None
        claims = orjson.loads(verified.payload)
        assert isinstance(claims, dict)  # the same bytes parsed as an object above
        check_claims(issuer, claims, now)
        caller = self._bind(issuer, claims)
        return _Verified(caller, issuer, float(claims["exp"]), claims.get("jti"))

    def _bind(self, issuer: TrustedIssuer, claims: Mapping[str, Any]) -> Caller:
        subject = claims.get("sub")
        candidates = self._bindings.get((issuer.name, str(subject)), [])
        matching = [
            b
            for b in candidates
            if all(claim(claims, path) == value for path, value in b.claims.items())
        ]
        if not matching:
            raise InvalidClient("no caller is bound to this workload identity")
        # The most specific binding wins (a pod-bound caller over its service account's).
        # The loader refuses bindings that could tie; this stays as the last line.
        most = max(len(b.claims) for b in matching)
        if len({b.caller for b in matching if len(b.claims) == most}) > 1:
            raise InvalidClient("this workload identity matches several callers")
        matching.sort(key=lambda b: len(b.claims), reverse=True)
        base = self._callers[matching[0].caller]
        pod = claim(claims, (_K8S, "pod", "name"))
        who = f"{subject} pod={pod}" if isinstance(pod, str) else str(subject)
        return Caller(
            name=base.name, roles=base.roles, credential=f"jwt:{issuer.name}", subject=who
        )

    def _remember(self, digest: bytes, verified: _Verified, now: float) -> None:
        if len(self._verified) >= _MAX_REMEMBERED:
            for old in [d for d, (_, until) in self._verified.items() if until <= now]:
                del self._verified[old]
            while len(self._verified) >= _MAX_REMEMBERED:
                del self._verified[next(iter(self._verified))]
        self._verified[digest] = (verified, min(verified.exp, now + self._remember_for))
