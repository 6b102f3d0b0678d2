# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""A loopback workload-identity issuer: a stand-in Kubernetes API server's OIDC endpoints.

It serves ``/.well-known/openid-configuration`` and ``/openid/v1/jwks`` over real HTTP on
127.0.0.1 with keys the tests generate, counts how often each is fetched, and mints tokens
with the claim shapes of real projected service-account tokens (``kubernetes.io`` object,
``sub = system:serviceaccount:<ns>:<sa>``, list ``aud``). It also forges the tokens an
attacker would try: ``alg: none``, HMAC signed with the public key, a tampered payload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

__all__ = ["WorkloadIssuer", "b64url", "forge_hmac_with_public_key", "forge_unsigned"]


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


class WorkloadIssuer:
    """Keys, a JWKS endpoint and a token minter for one issuer on 127.0.0.1."""

    def __init__(self) -> None:
        self.keys: list[RSAKey | ECKey] = []
        self.fetches = {"discovery": 0, "jwks": 0}
        self.fail = False  # answer 503 to every request while set
        self._lock = threading.Lock()
        self.rsa = self.add_key("RSA")
        self.ec = self.add_key("EC")
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if issuer.fail:
                    self._send(503, {"error": "down"})
                elif self.path == "/.well-known/openid-configuration":
                    issuer.count("discovery")
                    self._send(
                        200,
                        {
                            "issuer": issuer.url,
                            "jwks_uri": issuer.jwks_url,
                            "response_types_supported": ["id_token"],
                            "subject_types_supported": ["public"],
                            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                        },
                    )
                elif self.path == "/openid/v1/jwks":
                    issuer.count("jwks")
                    self._send(200, issuer.jwks())
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                del args

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.jwks_url = f"{self.url}/openid/v1/jwks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def count(self, what: str) -> None:
        """Record one fetch of ``what``."""
        with self._lock:
            self.fetches[what] += 1

    def add_key(self, kty: str = "RSA") -> RSAKey | ECKey:
        """Generate and publish a new signing key (a rotation adds one)."""
        key: RSAKey | ECKey
        if kty == "RSA":
            key = RSAKey.generate_key(2048, parameters={"kid": f"rsa-{secrets.token_hex(4)}"})
        else:
            key = ECKey.generate_key("P-256", parameters={"kid": f"ec-{secrets.token_hex(4)}"})
        self.keys.append(key)
        return key

    def jwks(self) -> dict[str, Any]:
        """The public JWK set as the API server publishes it."""
        keys = []
        for key in self.keys:
            public = key.as_dict(private=False)
            public["use"] = "sig"
            public["alg"] = "RS256" if key.key_type == "RSA" else "ES256"
            keys.append(public)
        return {"keys": keys}

    def claims(
        self,
        *,
        namespace: str = "ingestion",
        service_account: str = "runner",
        pod: str | None = "runner-7d9f8-abcde",
        audience: str | list[str] = "token-broker",
        lifetime: int = 3600,
        issued_ago: int = 0,
    ) -> dict[str, Any]:
        """The claims of a projected service-account token (kubelet-issued, pod-bound)."""
        now = int(time.time()) - issued_ago
        k8s: dict[str, Any] = {
            "namespace": namespace,
            "node": {"name": "worker-1", "uid": str(uuid.uuid4())},
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
        }
        if pod is not None:
            k8s["pod"] = {"name": pod, "uid": str(uuid.uuid4())}
        return {
            "aud": [audience] if isinstance(audience, str) else audience,
            "exp": now + lifetime,
            "iat": now,
            "nbf": now,
            "iss": self.url,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": k8s,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }

    def sign(
        self,
        claims: dict[str, Any],
        *,
        key: RSAKey | ECKey | None = None,
        kid: str | bool = True,
    ) -> str:
        """``claims`` signed by ``key`` (default: the first RSA key); ``kid=False`` omits it."""
        key = key or self.rsa
        alg = "RS256" if key.key_type == "RSA" else "ES256"
        header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if kid is True:
            header["kid"] = key.kid
        elif isinstance(kid, str):
            header["kid"] = kid
        return jwt.encode(header, claims, key, algorithms=[alg])

    def mint(self, **kwargs: Any) -> str:
        """A valid projected service-account token; keyword arguments as in ``claims``."""
        return self.sign(self.claims(**kwargs))

    def stop(self) -> None:
        """Shut the server down."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def forge_unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token: a header, the claims and an empty signature."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}."


def forge_hmac_with_public_key(claims: dict[str, Any], key: RSAKey, kid: str) -> str:
    """HS256 keyed with the issuer's public key PEM: the classic algorithm-confusion forgery."""
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{_segment(claims)}"
    secret = key.as_pem(private=False)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"
