"""The sidecar's token keeper (schedule, backoff, expiry) and its loopback HTTP endpoints.

Time is a fake clock and sleeping advances it: nothing here waits for real.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.observe.audit import fingerprint
from service.runner.client import ClientError, FetchedToken
from service.runner.sidecar import (
    MAX_BODY_BYTES,
    Backoff,
    Request,
    Response,
    SidecarApp,
    TokenKeeper,
    parse_listen,
    read_request,
    serve,
)
from tests.support.clock import FakeClock

T0 = 1000.0
FORM = {"content-type": "application/x-www-form-urlencoded"}


def token(n: int, expires_in: int = 300, scope: str = "ingestion read") -> FetchedToken:
    """A broker answer carrying token number ``n``."""
    access = f"tok-{n}-" + "x" * 20
    body = {"access_token": access, "expires_in": expires_in, "scope": scope}
    return FetchedToken(access, expires_in, scope, "issuer", body)


@dataclass
class FakeBroker:
    """Answers fetches from a script: a token, or an error to raise; records each ask."""

    clock: FakeClock
    script: list[FetchedToken | ClientError] = field(default_factory=list)
    asks: list[tuple[float, int]] = field(default_factory=list)

    async def fetch(self, min_ttl: int) -> FetchedToken:
        self.asks.append((self.clock.now - T0, min_ttl))
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, ClientError):
            raise answer
        return answer


def down() -> ClientError:
    """What the client raises when nothing listens at the broker URL."""
    return ClientError("broker unreachable at http://127.0.0.1:1: ConnectError")


def keeper_for(
    broker: FakeBroker, *, min_ttl: int = 0, path: Path | None = None, rand: float = 0.5
) -> TokenKeeper:
    """A keeper on the fake clock, fake sleep and a fixed jitter draw."""
    return TokenKeeper(
        fetch=broker.fetch,
        min_ttl=min_ttl,
        path=path,
        clock=broker.clock,
        sleep=broker.clock.sleep,
        rand=lambda: rand,
        backoff=Backoff(base=1.0, cap=30.0),
    )


async def run_until(keeper: TokenKeeper, clock: FakeClock, until: float) -> None:
    """Step the keeper, sleeping on the fake clock, until ``until`` seconds after T0."""
    for _ in range(10_000):
        if clock.now - T0 >= until:
            return
        await clock.sleep(min(await keeper.tick(), until - (clock.now - T0)))
    pytest.fail("keeper did not reach the end time")


# -- schedule ----------------------------------------------------------------------------------


async def test_refreshes_after_two_thirds_of_the_usable_life(tmp_path: Path) -> None:
    """A 300 s token with min_ttl 60 (usable 240 s) is refreshed 160 s after it was fetched."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [token(1), token(2), token(3)])
    keeper = keeper_for(broker, min_ttl=60, path=tmp_path / "t")
    await run_until(keeper, clock, 170)
    assert [t for t, _ in broker.asks] == [0, 160]
    assert keeper.held is not None
    assert keeper.held.token.access_token == token(2).access_token


async def test_without_min_ttl_the_margin_keeps_the_last_seconds_back() -> None:
    """With min_ttl 0 the usable life stops 5 s (at most a tenth of life) before expiry."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [token(1, expires_in=300), token(2, expires_in=30)])
    keeper = keeper_for(broker)
    await keeper.tick()
    assert keeper.next_fetch_at - T0 == pytest.approx(2 / 3 * 295)
    clock.now = keeper.next_fetch_at
    await keeper.tick()
    assert keeper.held is not None
    assert keeper.usable_until(keeper.held) == pytest.approx(clock.now + 27)


async def test_a_refresh_asks_for_a_token_newer_than_the_held_one() -> None:
    """A refresh asks for more life than the held token has, so the broker's cache is bypassed."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [token(1), token(2)])
    keeper = keeper_for(broker, min_ttl=60)
    await run_until(keeper, clock, 161)
    # At 160 s the held token has 140 s left: ask for at least 141.
    assert broker.asks == [(0, 60), (160, 141)]


async def test_a_refused_escalation_falls_back_to_min_ttl() -> None:
    """When the broker refuses the escalated min_ttl (400, e.g. above max_ttl), ask for min_ttl."""
    clock = FakeClock(T0)
    refused = ClientError("broker refused (HTTP 400 invalid_request)", status=400)
    broker = FakeBroker(clock, [token(1), refused, token(2)])
    keeper = keeper_for(broker, min_ttl=60)
    await run_until(keeper, clock, 161)
    assert broker.asks == [(0, 60), (160, 141), (160, 60)]
    assert keeper.failures == 0
    assert keeper.held is not None
    assert keeper.held.token.access_token == token(2).access_token


async def test_the_same_token_back_still_converges_and_never_spins() -> None:
    """If the broker keeps answering the held token, refreshes get closer but >= 1 s apart."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [token(1, expires_in=300)])

    async def same(min_ttl: int) -> FetchedToken:
        broker.asks.append((clock.now - T0, min_ttl))
        remaining = int(T0 + 300 - clock.now)
        return token(1, expires_in=remaining)

    keeper = keeper_for(broker)
    keeper.fetch = same
    await run_until(keeper, clock, 300)
    times = [t for t, _ in broker.asks]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1.0
    assert len(times) < 40
    assert keeper.held is None  # it ran out: dropped, not served


# -- backoff -----------------------------------------------------------------------------------


def test_backoff_is_exponential_full_jitter_and_capped() -> None:
    """Delays grow as base * 2**(n-1), scaled by the jitter draw, never above the cap."""
    backoff = Backoff(base=1.0, cap=30.0, floor=0.1)
    assert [backoff.delay(n, 0.999) for n in range(1, 8)] == pytest.approx(
        [0.999, 1.998, 3.996, 7.992, 15.984, 29.97, 29.97]
    )
    assert backoff.delay(5, 0.0) == 0.1
    assert backoff.delay(10_000, 0.5) == 15.0


def test_backoff_honours_retry_after_within_the_cap() -> None:
    """A broker's Retry-After lengthens the wait, but never beyond the cap."""
    backoff = Backoff(base=1.0, cap=30.0)
    assert backoff.delay(1, 0.5, retry_after=7) == 7
    assert backoff.delay(1, 0.5, retry_after=600) == 30


async def test_broker_down_backs_off_and_recovers() -> None:
    """While the broker is down retries back off exponentially; the first success resets it."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [down(), down(), down(), down(), token(1)])
    keeper = keeper_for(broker, rand=0.999)
    await run_until(keeper, clock, 20)
    times = [t for t, _ in broker.asks]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 4.0, 7.99]
    assert keeper.failures == 0
    assert keeper.current() is not None


async def test_broker_down_keeps_serving_the_valid_token(tmp_path: Path) -> None:
    """A failed refresh keeps the still-valid token held, in the file and served."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [token(1), down()])
    keeper = keeper_for(broker, path=tmp_path / "t")
    await run_until(keeper, clock, 250)
    assert keeper.failures > 0
    held = keeper.current()
    assert held is not None
    assert held.token.access_token == token(1).access_token
    assert (tmp_path / "t").read_text() == token(1).access_token


# -- never an expired token --------------------------------------------------------------------


async def test_an_expired_token_is_never_served_and_its_file_is_removed(tmp_path: Path) -> None:
    """Once the held token reaches its margin with no replacement: 503s and no file."""
    clock = FakeClock(T0)
    path = tmp_path / "t"
    broker = FakeBroker(clock, [token(1, expires_in=60), down()])
    keeper = keeper_for(broker, path=path)
    app = SidecarApp(keeper)
    await run_until(keeper, clock, 54.9)  # usable until 60 - min(5, 6) = 55 s
    assert app.respond(get("/token")).status == 200
    assert path.exists()
    await run_until(keeper, clock, 55.0)
    await keeper.tick()  # the loop wakes exactly at the token's usable end
    assert clock.now == T0 + 55.0
    assert keeper.held is None
    assert not path.exists()
    for request in (get("/token"), get("/healthz"), oauth2_post()):
        response = app.respond(request)
        assert response.status == 503
        assert token(1).access_token.encode() not in response.body
        assert int(response.headers["Retry-After"]) >= 1


async def test_a_token_below_min_ttl_is_not_served() -> None:
    """Even before the keeper ticks, current() refuses a token with less than min_ttl left."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [token(1, expires_in=300)])
    keeper = keeper_for(broker, min_ttl=100)
    await keeper.tick()
    app = SidecarApp(keeper)
    clock.now = T0 + 199.9
    assert app.respond(get("/token")).status == 200
    clock.now = T0 + 200.0
    assert keeper.current() is None
    assert app.respond(oauth2_post()).status == 503


async def test_a_broker_answer_already_below_min_ttl_is_refused() -> None:
    """A token that arrives with less than min_ttl left is not held or written."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [token(1, expires_in=50)])
    keeper = keeper_for(broker, min_ttl=100)
    assert not await keeper.refresh()
    assert keeper.held is None
    assert keeper.last_error is not None


async def test_logs_carry_the_fingerprint_never_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The keeper's log lines name the token's fingerprint and never the token itself."""
    caplog.set_level(logging.DEBUG, logger="token_broker.sidecar")
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [token(1, expires_in=60), down()])
    keeper = keeper_for(broker, path=tmp_path / "t")
    await run_until(keeper, clock, 60)
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert fingerprint(token(1).access_token) in text
    assert "tok-1" not in text
    assert {r.__dict__.get("event") for r in caplog.records} >= {
        "sidecar_token",
        "sidecar_refresh_failed",
        "sidecar_token_dropped",
    }


# -- --once ------------------------------------------------------------------------------------


async def test_once_writes_a_private_file(tmp_path: Path) -> None:
    """--once fetches one token and writes it verbatim with mode 0600."""
    clock = FakeClock(T0)
    keeper = keeper_for(FakeBroker(clock, [token(1)]), path=tmp_path / "t")
    assert await keeper.once(60)
    assert (tmp_path / "t").read_text() == token(1).access_token
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o600


async def test_once_gives_up_at_once_on_a_definite_refusal(tmp_path: Path) -> None:
    """A 400 (min_ttl the issuer cannot satisfy) ends --once after one ask, no file."""
    clock = FakeClock(T0)
    refused = ClientError("broker refused (HTTP 400 invalid_request)", status=400)
    broker = FakeBroker(clock, [refused])
    keeper = keeper_for(broker, path=tmp_path / "t")
    assert not await keeper.once(60)
    assert len(broker.asks) == 1
    assert not (tmp_path / "t").exists()


async def test_once_retries_an_unreachable_broker_within_its_budget(tmp_path: Path) -> None:
    """An unreachable broker is retried with backoff, and --once fails when time is up."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [down()])
    keeper = keeper_for(broker, path=tmp_path / "t", rand=0.999)
    assert not await keeper.once(20)
    assert [round(t) for t, _ in broker.asks] == [0, 1, 3, 7, 15]
    assert clock.now - T0 <= 20


async def test_once_succeeds_when_the_broker_comes_up(tmp_path: Path) -> None:
    """A broker that answers on the third try still gives --once its token."""
    clock = FakeClock(T0)
    broker = FakeBroker(clock, [down(), down(), token(1)])
    keeper = keeper_for(broker, path=tmp_path / "t")
    assert await keeper.once(60)
    assert len(broker.asks) == 3
    assert (tmp_path / "t").read_text() == token(1).access_token


# -- HTTP endpoints ----------------------------------------------------------------------------


def get(path: str, query: str = "") -> Request:
    """A GET request."""
    return Request("GET", path, query, {}, b"")


def oauth2_post(body: bytes = b"grant_type=client_credentials", **headers: str) -> Request:
    """A POST /oauth2/token with a form body."""
    return Request("POST", "/oauth2/token", "", {**FORM, **headers}, body)


async def holding(scope: str = "ingestion read") -> tuple[SidecarApp, FakeClock]:
    """An app whose keeper holds token 1 (300 s, ``scope``)."""
    clock = FakeClock(T0)
    keeper = keeper_for(FakeBroker(clock, [token(1, scope=scope)]))
    await keeper.tick()
    return SidecarApp(keeper), clock


def body(response: Response) -> dict[str, object]:
    """The JSON body of ``response``."""
    parsed = json.loads(response.body)
    assert isinstance(parsed, dict)
    return parsed


async def test_get_token_serves_the_bare_token_as_text() -> None:
    """GET /token answers the token alone, text/plain, no-store."""
    app, _ = await holding()
    response = app.respond(get("/token"))
    assert response.status == 200
    assert response.body == token(1).access_token.encode()
    assert response.content_type.startswith("text/plain")
    assert b"Cache-Control: no-store" in response.encode()


async def test_get_token_json_reports_the_remaining_life() -> None:
    """GET /token?format=json answers the OAuth2 token shape with the time left now."""
    app, clock = await holding()
    clock.now += 100
    assert body(app.respond(get("/token", "format=json"))) == {
        "access_token": token(1).access_token,
        "token_type": "Bearer",
        "expires_in": 200,
        "scope": "ingestion read",
    }
    assert app.respond(get("/token", "format=xml")).status == 400


async def test_oauth2_facade_answers_an_openmetadata_custom_oidc_post() -> None:
    """A form post with client_id and client_secret gets a Bearer token, numeric expires_in."""
    app, _ = await holding()
    response = app.respond(
        oauth2_post(b"grant_type=client_credentials&client_id=om&client_secret=anything")
    )
    assert response.status == 200
    answer = body(response)
    assert answer["access_token"] == token(1).access_token
    assert answer["token_type"] == "Bearer"
    assert isinstance(answer["expires_in"], int)
    assert answer["expires_in"] > 120
    assert b"Cache-Control: no-store" in response.encode()


async def test_oauth2_facade_accepts_a_scope_it_holds() -> None:
    """A scope within the held token's scope is granted (Basic auth header ignored)."""
    app, _ = await holding()
    response = app.respond(
        oauth2_post(b"grant_type=client_credentials&scope=read", authorization="Basic b206eA==")
    )
    assert response.status == 200


@pytest.mark.parametrize(
    ("request_", "status", "error"),
    [
        (oauth2_post(b"client_id=om"), 400, "invalid_request"),
        (oauth2_post(b"grant_type=password&username=a"), 400, "unsupported_grant_type"),
        (oauth2_post(b"grant_type=client_credentials&scope=admin"), 400, "invalid_scope"),
        (
            oauth2_post(b"grant_type=client_credentials&grant_type=client_credentials"),
            400,
            "invalid_request",
        ),
        (oauth2_post(b"grant_type=%ff%fe"), 400, "unsupported_grant_type"),
        (oauth2_post(b"a=b&&&=="), 400, "invalid_request"),
        (
            Request("POST", "/oauth2/token", "", {"content-type": "application/json"}, b"{}"),
            400,
            "invalid_request",
        ),
        (get("/oauth2/token"), 405, "invalid_request"),
        (Request("POST", "/token", "", {}, b""), 405, "invalid_request"),
        (get("/nowhere"), 404, "invalid_request"),
        (get("/token", "format=json&format=text"), 400, "invalid_request"),
    ],
)
async def test_bad_requests_get_rfc6749_errors(request_: Request, status: int, error: str) -> None:
    """Malformed or unsupported requests get a 4xx RFC 6749 error body, never a token."""
    app, _ = await holding()
    response = app.respond(request_)
    assert response.status == status
    answer = body(response)
    assert answer["error"] == error
    assert isinstance(answer["error_description"], str)
    assert b"tok-1" not in response.body


async def test_healthz_reports_the_held_token() -> None:
    """GET /healthz is 200 with expires_in while a token is held."""
    app, _ = await holding()
    response = app.respond(get("/healthz"))
    assert response.status == 200
    assert body(response) == {"status": "ok", "expires_in": 300}


def test_healthz_is_503_before_the_first_token() -> None:
    """Before any token is held /healthz answers 503 with Retry-After."""
    clock = FakeClock(T0)
    keeper = keeper_for(FakeBroker(clock, [down()]))
    response = SidecarApp(keeper).respond(get("/healthz"))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"


# -- wire parsing ------------------------------------------------------------------------------


async def parse(raw: bytes) -> Request:
    """``read_request`` over ``raw`` bytes."""
    reader = asyncio.StreamReader(limit=16384)
    reader.feed_data(raw)
    reader.feed_eof()
    return await read_request(reader)


async def test_read_request_parses_a_form_post() -> None:
    """A well-formed POST yields method, path, query, lower-cased headers and body."""
    request = await parse(
        b"POST /oauth2/token?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-"
        b"urlencoded\r\nContent-Length: 29\r\n\r\ngrant_type=client_credentials"
    )
    assert (request.method, request.path, request.query) == ("POST", "/oauth2/token", "x=1")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.body == b"grant_type=client_credentials"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 400),
        (b"GET /token\r\n\r\n", 400),
        (b"GET /token HTTP/2\r\n\r\n", 400),
        (b"GET /token HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET /token HTTP/1.1\r\nHost: a", 400),
        (b"GET /token HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /token HTTP/1.1\r\n" + b"X: a\r\n" * 100 + b"\r\n", 431),
        (b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"POST /t HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n", 400),
        (b"POST /t HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (f"POST /t HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode(), 413),
        (b"POST /t HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 400),
    ],
)
async def test_read_request_refuses_malformed_input(raw: bytes, status: int) -> None:
    """Malformed, oversized or chunked requests raise an OAuth2Error with a 4xx status."""
    from service.runner.oauth2 import OAuth2Error  # noqa: PLC0415

    with pytest.raises(OAuth2Error) as caught:
        await parse(raw)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8099", ("127.0.0.1", 8099)),
        ("127.0.0.2:0", ("127.0.0.2", 0)),
        ("[::1]:8099", ("::1", 8099)),
        ("localhost:8099", ("127.0.0.1", 8099)),
    ],
)
def test_parse_listen_accepts_loopback(text: str, expected: tuple[str, int]) -> None:
    """Loopback addresses (IPv4, IPv6, localhost) are accepted."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["0.0.0.0:8099", "10.1.2.3:80", "[::]:80", "example.com:80", "8099", "127.0.0.1:99999"]
)
def test_parse_listen_refuses_anything_else(text: str) -> None:
    """A non-loopback or malformed --listen is refused with a clear message."""
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)


# -- the real loop -----------------------------------------------------------------------------


async def http_exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` to 127.0.0.1:``port`` and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return data


async def test_serve_answers_on_loopback_and_stops_on_request(tmp_path: Path) -> None:
    """serve() fetches, answers HTTP on a real socket, garbage included, and stops cleanly."""
    from tests.support import free_port  # noqa: PLC0415

    calls: list[int] = []

    async def fetch(min_ttl: int) -> FetchedToken:
        calls.append(min_ttl)
        return token(1)

    keeper = TokenKeeper(fetch=fetch, path=tmp_path / "t")
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(keeper, ("127.0.0.1", port), stop))
    for _ in range(100):
        if keeper.current() is not None:
            break
        await asyncio.sleep(0.02)
    ok = await http_exchange(port, b"GET /token HTTP/1.1\r\nHost: x\r\n\r\n")
    garbage: list[bytes] = [
        b"\x00\xff\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST /oauth2/token HTTP/1.1\r\nContent-Length: 3\r\n\r\n%%%",
    ]
    answers = [await http_exchange(port, raw) for raw in garbage]
    stop.set()
    await asyncio.wait_for(task, 5)
    assert calls == [0]
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    assert ok.endswith(b"\r\n\r\n" + token(1).access_token.encode())
    for answer in answers:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500
    with pytest.raises(OSError, match=r"refused|Connect"):
        await http_exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
