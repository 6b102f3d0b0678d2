"""Who gets which token: every caller x profile x scope set, through both token endpoints.

The fixture policy below is written once as plain tables; the expected outcome of every cell
is computed from those tables by this module (``expected``), never by ``service.core.policy``.
Every cell is requested against a real broker (Redis, oidc-provider behind the counting
proxy): allowed cells must get a token carrying exactly the requested scopes (or, with none
requested, the whole grant), every other cell a 403, and no refused cell may cause a single
token request at the issuer.

A profile that does not exist is refused like a profile the caller holds no grant for: 403
``unauthorized_client`` (``Policy.decide`` finds no rule for it), so a caller cannot tell a
missing profile from one it is not allowed to see.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import OidcProvider, verify_access_token
from tests.support.broker import BrokerFiles, bearer, new_key, running_broker

# -- the fixture policy ---------------------------------------------------------------------

PROFILES: dict[str, tuple[str, tuple[str, ...]]] = {
    # profile -> (oidc-provider client, the profile's scopes)
    "ingestion": ("broker-basic", ("ingestion", "read", "write")),
    "analytics": ("broker-post", ("read", "write")),
}
GHOST = "ghost"
"""A profile named in requests but absent from the configuration."""

GRANTS: dict[str, dict[str, tuple[str, ...] | None]] = {
    # caller -> profile -> granted scopes (None: the grant names no scopes, so all the profile's)
    "airflow": {"ingestion": None},
    "reader": {"ingestion": ("read",)},
    "multi": {"ingestion": ("ingestion", "read"), "analytics": None},
    "writer": {"analytics": ("write",)},
    "idle": {},
}
SCOPE_SETS: dict[str, tuple[str, ...] | None] = {
    "none": None,
    "ingestion": ("ingestion",),
    "read": ("read",),
    "write": ("write",),
    "all": ("ingestion", "read", "write"),
    "unknown": ("admin",),
    "read+unknown": ("read", "admin"),
}


@dataclass(frozen=True)
class Outcome:
    """What one cell must produce: a token with ``scopes``, or a 403 with ``error``."""

    scopes: frozenset[str] | None = None
    error: str | None = None

    @property
    def allowed(self) -> bool:
        """Whether the cell gets a token."""
        return self.error is None


def expected(caller: str, profile: str, requested: tuple[str, ...] | None) -> Outcome:
    """The outcome of one cell, from the tables above."""
    grants = GRANTS[caller]
    if profile not in grants:  # no grant, or no such profile at all
        return Outcome(error="unauthorized_client")
    granted = grants[profile]
    allowed = frozenset(PROFILES[profile][1] if granted is None else granted)
    if requested is None:
        return Outcome(scopes=allowed)
    if not set(requested) <= allowed:
        return Outcome(error="invalid_scope")
    return Outcome(scopes=frozenset(requested))


@dataclass(frozen=True)
class Cell:
    """One caller asking for one profile with one scope set."""

    caller: str
    profile: str
    scope_set: str

    @property
    def requested(self) -> tuple[str, ...] | None:
        """The scopes asked for, or None for none."""
        return SCOPE_SETS[self.scope_set]

    @property
    def outcome(self) -> Outcome:
        """What this cell must produce."""
        return expected(self.caller, self.profile, self.requested)

    def __str__(self) -> str:
        return f"{self.caller} x {self.profile} x {self.scope_set}"


def all_cells() -> list[Cell]:
    """Every caller x (configured profiles + a missing one) x every scope set."""
    return [
        Cell(caller, profile, scope_set)
        for caller in GRANTS
        for profile in [*PROFILES, GHOST]
        for scope_set in SCOPE_SETS
    ]


def test_the_matrix_covers_every_kind_of_cell() -> None:
    """The fixture policy yields allowed, invalid_scope and unauthorized_client cells."""
    outcomes = [cell.outcome for cell in all_cells()]
    assert len(outcomes) == 5 * 3 * 7
    # Counted by hand: airflow 5 + reader 2 + multi 3 + 3 + writer 2 allowed, out of the
    # 5 granted (caller, profile) rows x 7 scope sets; the other 70 cells lack a grant.
    assert sum(o.allowed for o in outcomes) == 15
    assert sum(o.error == "invalid_scope" for o in outcomes) == 35 - 15
    assert sum(o.error == "unauthorized_client" for o in outcomes) == 70
    # Spot checks of the table against the policy as README states it.
    assert expected("reader", "ingestion", None) == Outcome(scopes=frozenset({"read"}))
    assert expected("multi", "analytics", None) == Outcome(scopes=frozenset({"read", "write"}))
    assert expected("multi", "analytics", ("ingestion",)).error == "invalid_scope"
    assert expected("airflow", GHOST, ("admin",)).error == "unauthorized_client"


# -- the broker -----------------------------------------------------------------------------


def write_matrix_config(directory: Path, issuer: OidcProvider) -> BrokerFiles:
    """The fixture policy as broker YAML: two profiles on the one issuer, five callers."""
    profiles: dict[str, Any] = {}
    known: list[str] = []
    for name, (client_id, scopes) in PROFILES.items():
        client = issuer.client(client_id)
        assert client.client_secret is not None
        secret_file = directory / f"{client_id}.secret"
        secret_file.write_text(client.client_secret + "\n")
        known.append(client.client_secret)
        profiles[name] = {
            "provider": "oidc",
            "issuer": issuer.issuer,
            "client_id": client_id,
            "auth_method": client.token_endpoint_auth_method,
            "client_secret": {"file": str(secret_file)},
            "scopes": list(scopes),
        }
    keys = {caller: new_key(caller) for caller in GRANTS}
    callers = {
        caller: {
            "api_key_sha256": hashlib.sha256(keys[caller].encode()).hexdigest(),
            "grants": [
                {"profile": profile} if scopes is None else {"profile": profile, "scopes": scopes}
                for profile, scopes in grants.items()
            ],
        }
        for caller, grants in GRANTS.items()
    }
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump({"profiles": profiles, "callers": callers}))
    return BrokerFiles(config=path, keys=keys, secrets=known + list(keys.values()))


@pytest.fixture
def matrix_files(tmp_path: Path, issuer: OidcProvider) -> BrokerFiles:
    """The fixture policy on disk."""
    return write_matrix_config(tmp_path, issuer)


async def request_v1(client: httpx.AsyncClient, files: BrokerFiles, cell: Cell) -> httpx.Response:
    """The cell through ``POST /v1/token``."""
    body: dict[str, Any] = {"profile": cell.profile}
    if cell.requested is not None:
        body["scopes"] = list(cell.requested)
    return await client.post("/v1/token", json=body, headers=bearer(files.keys[cell.caller]))


async def request_oauth2(
    client: httpx.AsyncClient, files: BrokerFiles, cell: Cell, *, resource: bool = True
) -> httpx.Response:
    """The cell through the ``POST /oauth2/token`` facade (client_secret_post)."""
    form = {
        "grant_type": "client_credentials",
        "client_id": cell.caller,
        "client_secret": files.keys[cell.caller],
    }
    if resource:
        form["resource"] = cell.profile
    if cell.requested is not None:
        form["scope"] = " ".join(cell.requested)
    return await client.post("/oauth2/token", data=form)


def check_refused(cell: Cell, response: httpx.Response) -> None:
    """A refused cell: 403 with the expected RFC 6749 code and no token."""
    assert response.status_code == 403, f"{cell}: {response.status_code} {response.text}"
    body = response.json()
    assert body["error"] == cell.outcome.error, f"{cell}: {body}"
    assert set(body) == {"error", "error_description"}, f"{cell}: {body}"


def check_issued(cell: Cell, response: httpx.Response, issuer: OidcProvider) -> str:
    """An allowed cell: 200 and a token for the profile's client with exactly the scopes."""
    assert response.status_code == 200, f"{cell}: {response.status_code} {response.text}"
    body = response.json()
    want = cell.outcome.scopes
    assert want is not None
    assert frozenset(body["scope"].split()) == want, f"{cell}: scope {body['scope']!r}"
    assert body.get("profile", cell.profile) == cell.profile, f"{cell}: {body.get('profile')}"
    return str(body["access_token"])


def check_token_claims(cell: Cell, token: str, jwks: dict[str, Any]) -> None:
    """The JWT itself (signature verified) was issued to the profile's client, for the scopes."""
    _, claims = verify_access_token(token, jwks)
    assert claims["client_id"] == PROFILES[cell.profile][0], f"{cell}: {claims}"
    assert frozenset(str(claims.get("scope", "")).split()) == cell.outcome.scopes, f"{cell}"


def distinct_tokens(cells: list[Cell]) -> set[tuple[str, frozenset[str]]]:
    """The (profile, scope set) pairs the allowed cells need: one exchange each."""
    return {(c.profile, c.outcome.scopes) for c in cells if c.outcome.scopes is not None}


def shuffled(cells: list[Cell], seed: int) -> Iterator[Cell]:
    """``cells`` in a fixed pseudo-random order, so denials interleave with issuance."""
    order = list(cells)
    random.Random(seed).shuffle(order)
    yield from order


async def test_v1_token_matrix(
    matrix_files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """POST /v1/token: allowed cells get exactly their scopes, others 403, never an exchange."""
    cells = all_cells()
    denied = [c for c in cells if not c.outcome.allowed]
    allowed = [c for c in cells if c.outcome.allowed]
    tokens: dict[Cell, str] = {}
    async with running_broker(matrix_files.settings(redis_url)) as client:
        # 1. Cold cache, denied cells only: the issuer must not see a single token request.
        for cell in denied:
            check_refused(cell, await request_v1(client, matrix_files, cell))
        assert issuer.proxy.token_requests == 0, issuer.proxy.token_request_log

        # 2. Allowed cells: one exchange per distinct (profile, scopes), the rest from cache.
        for cell in allowed:
            tokens[cell] = check_issued(cell, await request_v1(client, matrix_files, cell), issuer)
        assert issuer.proxy.token_requests == len(distinct_tokens(allowed))

        # 3. Everything again, interleaved, warm cache: refusals still cost the issuer nothing.
        before = issuer.proxy.token_requests
        for cell in shuffled(cells, seed=6749):
            count = issuer.proxy.token_requests
            response = await request_v1(client, matrix_files, cell)
            if cell.outcome.allowed:
                assert check_issued(cell, response, issuer) == tokens[cell], cell
                assert response.headers["token-broker-source"] == "cache", cell
            else:
                check_refused(cell, response)
                assert issuer.proxy.token_requests == count, f"{cell} reached the issuer"
        assert issuer.proxy.token_requests == before
    jwks = issuer.jwks()
    for cell, token in tokens.items():
        check_token_claims(cell, token, jwks)


async def test_oauth2_facade_matrix_sample(
    matrix_files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """POST /oauth2/token with resource=<profile> decides every sampled cell like /v1/token."""
    sample = [c for c in all_cells() if c.scope_set in {"none", "read", "all", "unknown"}]
    denied = [c for c in sample if not c.outcome.allowed]
    allowed = [c for c in sample if c.outcome.allowed]
    assert denied
    assert allowed
    tokens: dict[Cell, str] = {}
    async with running_broker(matrix_files.settings(redis_url)) as client:
        for cell in denied:
            check_refused(cell, await request_oauth2(client, matrix_files, cell))
        assert issuer.proxy.token_requests == 0, issuer.proxy.token_request_log
        for cell in shuffled(sample, seed=7523):
            count = issuer.proxy.token_requests
            response = await request_oauth2(client, matrix_files, cell)
            if cell.outcome.allowed:
                tokens[cell] = check_issued(cell, response, issuer)
            else:
                check_refused(cell, response)
                assert issuer.proxy.token_requests == count, f"{cell} reached the issuer"
        assert issuer.proxy.token_requests == len(distinct_tokens(allowed))
    jwks = issuer.jwks()
    for cell, token in tokens.items():
        check_token_claims(cell, token, jwks)


async def test_oauth2_facade_without_resource(
    matrix_files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """Without resource=, a one-grant caller gets that grant; others are refused, unexchanged."""
    async with running_broker(matrix_files.settings(redis_url)) as client:
        for caller, grants in GRANTS.items():
            (profile,) = grants if len(grants) == 1 else (GHOST,)
            for scope_set in ("none", "read", "unknown"):
                cell = Cell(caller, profile, scope_set)
                count = issuer.proxy.token_requests
                response = await request_oauth2(client, matrix_files, cell, resource=False)
                if len(grants) > 1:
                    # The facade cannot guess which grant is meant.
                    assert response.status_code == 400, f"{cell}: {response.text}"
                    assert response.json()["error"] == "invalid_request"
                elif not grants:
                    # No grant at all. Today this is a 400 "caller holds several grants" (see
                    # routes._pick_profile); what must hold either way is a 4xx, no exchange.
                    assert response.status_code in {400, 403}, f"{cell}: {response.text}"
                    assert response.json()["error"] in {"invalid_request", "unauthorized_client"}
                elif cell.outcome.allowed:
                    check_issued(cell, response, issuer)
                else:
                    check_refused(cell, response)
                if not (grants and cell.outcome.allowed):
                    assert issuer.proxy.token_requests == count, f"{cell} reached the issuer"
