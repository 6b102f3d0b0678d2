"""One door for every caller credential: API keys and workload JWTs.

A bearer credential is told apart by its shape (``tbk_…`` is an API key, three base64url
parts a JWT), so runners never say which kind they present, and the same
``Authorization: Bearer`` header works for an Airflow task with a key and for a pod with
its projected service-account token.

A workload JWT refused by its issuer's ``replay: refuse`` rule is refused at both doors:
as a Bearer credential it is a 401 ``invalid_client`` like any bad credential, and as an
RFC 7523 ``client_assertion`` a 400 ``invalid_grant``, the code for an assertion whose
signature and claims were good but which cannot be used (again).
"""

from __future__ import annotations

from service.callers.api_keys import ApiKeyAuthenticator
from service.callers.jwt import ReplayRefused, WorkloadAuthenticator, looks_like_jwt
from service.errors import InvalidClient, InvalidGrant
from service.models import Caller

JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Authenticator:
    """Turns a presented credential into a ``Caller`` or raises ``InvalidClient``."""

    def __init__(
        self, api_keys: ApiKeyAuthenticator, workloads: WorkloadAuthenticator | None
    ) -> None:
        self._api_keys = api_keys
        self._workloads = workloads

    async def bearer(self, credential: str) -> Caller:
        """``Authorization: Bearer <credential>``: an API key or a workload JWT."""
        if credential.startswith("tbk_"):
            return self._api_keys.authenticate(credential)
        if looks_like_jwt(credential):
            return await self._workload(credential)
        raise InvalidClient("credential is neither an API key nor a JWT")

    def client_secret(self, client_id: str, secret: str) -> Caller:
        """OAuth2 client_secret_basic / client_secret_post: caller name and API key."""
        return self._api_keys.authenticate_client(client_id, secret)

    async def client_assertion(self, assertion: str, client_id: str | None) -> Caller:
        """RFC 7523 section 2.2: a workload JWT as the client's authentication."""
        if not looks_like_jwt(assertion):
            raise InvalidClient("client_assertion is not a JWT")
        try:
            caller = await self._workload(assertion)
        except ReplayRefused as exc:
            raise InvalidGrant(exc.description) from None
        # RFC 7521 section 4.2: a client_id sent alongside must name the same client.
        if client_id is not None and client_id != caller.name:
            raise InvalidClient("client_id does not match the client_assertion")
        return caller

    async def _workload(self, token: str) -> Caller:
        if self._workloads is None:
            raise InvalidClient("workload identity is not configured (no trusted_issuers)")
        return await self._workloads.authenticate(token)
