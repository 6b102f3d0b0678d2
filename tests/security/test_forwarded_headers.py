"""Forwarded headers: spoofing the client address to reset the throttle or forge the audit log.

The client address keys the failed-authentication throttle and is the audit line's
``client``. It is the TCP peer unless that peer is in ``TOKEN_BROKER_TRUSTED_PROXIES``;
uvicorn's own X-Forwarded-For handling (which believes any loopback peer) must stay off.
"""

from __future__ import annotations

import itertools
import json
import logging
from contextlib import ExitStack
from ipaddress import ip_network
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import ValidationError

from service.api.middleware.proxies import Network, TrustedProxies, parse_address, pick_client
from service.config.settings import Settings
from tests.support.audit_trail import AuditTrail
from tests.support.broker import bearer, running_broker
from tests.support.broker_process import (
    BrokerProcess,
    broker_env,
    run_cli,
    start_broker,
    wait_ready,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

    from starlette.types import Message, Receive, Scope, Send

    from tests.support import OidcProvider
    from tests.support.broker import BrokerFiles

PEER = "127.0.0.1"
AUTH_LIMIT = 3
REQUEST_TIMEOUT = 10.0
# Not an API key nor a JWT: refused as "credential is neither an API key nor a JWT", a
# description that shares no word with the junk below.
BAD = bearer("not-a-credential")
JUNK = [
    pytest.param("<script>alert(1)</script>", "<script>", id="markup"),
    pytest.param("A" * 4000, "A" * 40, id="very-long"),
    pytest.param("1.2.3.4\nforged", "forged", id="newline"),
    pytest.param("unknown", "unknown", id="unknown"),
    pytest.param("1.2.3.4, evil", "evil", id="trailing-junk"),
    pytest.param("fe80::1%evil", "evil", id="ipv6-scope-id"),
]
TRUST_LOOPBACK = ip_network("127.0.0.1/32"), ip_network("::1/128")


class ConfiguredBroker(BrokerProcess):
    """A :class:`BrokerProcess` started with extra ``TOKEN_BROKER_*`` variables."""

    def __init__(self, files: BrokerFiles, log: Path, env: Mapping[str, str]) -> None:
        super().__init__(files, log)
        self.env = dict(env)

    def start(self) -> None:
        """Start it with :attr:`env` and wait (bounded) until it is ready."""
        self.process, _ = start_broker(self.files, self.log, port=self.port, extra_env=self.env)
        try:
            wait_ready(self.url, self.process, self.log)
        except BaseException:
            self.stop()
            raise

    def post_token(self, headers: list[tuple[str, str]]) -> httpx.Response:
        """``POST /v1/token`` with a bad credential and ``headers``, bounded in time."""
        with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as client:
            return client.post(
                self.url + "/v1/token",
                json={"profile": "ingestion"},
                headers=[*BAD.items(), *headers],
            )

    def denials(self, count: int) -> list[dict[str, Any]]:
        """The first ``count`` denial audit lines, waiting (bounded) for them to be written."""
        self.wait_for_audit(lambda _: len(self._denials()) >= count)
        return self._denials()[:count]

    def _denials(self) -> list[dict[str, Any]]:
        return [line for line in self.audit_lines() if line.get("outcome") == "denied"]


@pytest.fixture
def serve(
    files: BrokerFiles, issuer: OidcProvider, tmp_path: Path
) -> Iterator[Callable[..., ConfiguredBroker]]:
    """Start real ``python -m service serve`` brokers (uvicorn) with extra environment."""
    if not issuer.is_running():
        issuer.restart()
    issuer.proxy.set_fault(None)
    numbers = itertools.count()
    with ExitStack() as stack:

        def start(**env: str) -> ConfiguredBroker:
            log = tmp_path / f"broker-{next(numbers)}.log"
            return stack.enter_context(ConfiguredBroker(files, log, env))

        yield start


# --- a real served broker, default settings: uvicorn must not believe X-Forwarded-For --------


def test_served_broker_audits_the_peer_not_x_forwarded_for(
    serve: Callable[..., ConfiguredBroker],
) -> None:
    """Audit forgery: by default X-Forwarded-For from a loopback peer never becomes `client`."""
    broker = serve()
    response = broker.post_token([("X-Forwarded-For", "203.0.113.9")])
    assert response.status_code == 401
    (line,) = broker.denials(1)
    assert line["client"] == PEER
    assert "203.0.113.9" not in broker.log.read_text()


def test_served_broker_throttle_is_not_reset_by_x_forwarded_for(
    serve: Callable[..., ConfiguredBroker],
) -> None:
    """Throttle evasion: a new X-Forwarded-For per attempt still hits the per-peer limit."""
    broker = serve(TOKEN_BROKER_AUTH_FAILURES_PER_MINUTE=str(AUTH_LIMIT))
    statuses = [
        broker.post_token([("X-Forwarded-For", f"203.0.113.{attempt}")]).status_code
        for attempt in range(1, AUTH_LIMIT + 3)
    ]
    assert statuses == [401] * AUTH_LIMIT + [429, 429]
    assert {line["client"] for line in broker.denials(AUTH_LIMIT)} == {PEER}


def test_served_broker_ignores_forwarded_and_x_real_ip(
    serve: Callable[..., ConfiguredBroker],
) -> None:
    """Audit forgery: Forwarded and X-Real-IP never name the client, trusted peer or not."""
    for broker in (serve(), serve(TOKEN_BROKER_TRUSTED_PROXIES="127.0.0.1/32")):
        response = broker.post_token(
            [("Forwarded", "for=198.51.100.1"), ("X-Real-IP", "198.51.100.2")]
        )
        assert response.status_code == 401
        (line,) = broker.denials(1)
        assert line["client"] == PEER


# --- a real served broker behind a trusted proxy ----------------------------------------------


def test_served_broker_behind_trusted_proxy_takes_the_rightmost_untrusted_address(
    serve: Callable[..., ConfiguredBroker],
) -> None:
    """Spoofing via a trusted proxy: the rightmost untrusted entry is the client, not the first."""
    broker = serve(TOKEN_BROKER_TRUSTED_PROXIES="127.0.0.1/32")
    sent = [
        [("X-Forwarded-For", "198.51.100.7")],
        [("X-Forwarded-For", "203.0.113.66, 198.51.100.8, 127.0.0.1")],
        [("X-Forwarded-For", "203.0.113.66"), ("X-Forwarded-For", "198.51.100.9")],
        [("X-Forwarded-For", "127.0.0.1, 127.0.0.1")],
        [("X-Forwarded-For", "[2001:db8::5]:443")],
    ]
    for headers in sent:
        assert broker.post_token(headers).status_code == 401
    clients = [line["client"] for line in broker.denials(len(sent))]
    assert clients == ["198.51.100.7", "198.51.100.8", "198.51.100.9", PEER, "2001:db8::5"]


def test_served_broker_behind_trusted_proxy_throttles_per_forwarded_client(
    serve: Callable[..., ConfiguredBroker],
) -> None:
    """Lock-out: behind a trusted proxy the throttle counts each forwarded client on its own."""
    broker = serve(
        TOKEN_BROKER_TRUSTED_PROXIES="127.0.0.1/32",
        TOKEN_BROKER_AUTH_FAILURES_PER_MINUTE=str(AUTH_LIMIT),
    )
    attacker = [("X-Forwarded-For", "203.0.113.13")]
    statuses = [broker.post_token(attacker).status_code for _ in range(AUTH_LIMIT + 1)]
    assert statuses == [401] * AUTH_LIMIT + [429]
    assert broker.post_token([("X-Forwarded-For", "198.51.100.20")]).status_code == 401


def test_served_broker_behind_trusted_proxy_never_logs_header_junk(
    serve: Callable[..., ConfiguredBroker],
) -> None:
    """Log injection over the wire: junk X-Forwarded-For is in no audit line and no response."""
    broker = serve(TOKEN_BROKER_TRUSTED_PROXIES="127.0.0.1/32")
    wire_junk = ["<script>alert(1)</script>", "B" * 4000, "unknown", "1.2.3.4, evil"]
    bodies = []
    for junk in wire_junk:
        response = broker.post_token([("X-Forwarded-For", junk)])
        assert response.status_code == 401
        bodies.append(response.text)
    lines = broker.denials(len(wire_junk))
    assert {line["client"] for line in lines} == {PEER}
    for marker in ("<script>", "B" * 40, "unknown", "evil"):
        assert all(marker not in json.dumps(line) for line in broker.audit_lines())
        assert all(marker not in body for body in bodies)


# --- in-process: junk the HTTP parser would refuse still cannot get through -------------------


@pytest.mark.parametrize(("junk", "marker"), JUNK)
async def test_junk_x_forwarded_for_falls_back_to_the_peer(
    files: BrokerFiles,
    caplog: pytest.LogCaptureFixture,
    audit_trail: AuditTrail,
    junk: str,
    marker: str,
) -> None:
    """Log injection: junk in X-Forwarded-For from a trusted peer is never copied anywhere."""
    caplog.set_level(logging.INFO)
    settings = files.settings(trusted_proxies="127.0.0.1/32")
    async with running_broker(settings) as client:
        response = await client.post(
            "/v1/token",
            json={"profile": "ingestion"},
            headers=[*BAD.items(), ("X-Forwarded-For", junk)],
        )
    assert response.status_code == 401
    assert marker not in response.text
    lines = audit_trail.lines()
    assert [line["client"] for line in lines] == [PEER]
    assert all(marker not in json.dumps(line) for line in lines)
    assert marker not in caplog.text


async def test_in_process_default_ignores_x_forwarded_for(
    files: BrokerFiles, audit_trail: AuditTrail
) -> None:
    """Audit forgery: with no trusted proxies the app itself never reads X-Forwarded-For."""
    async with running_broker(files.settings()) as client:
        response = await client.post(
            "/v1/token",
            json={"profile": "ingestion"},
            headers=[*BAD.items(), ("X-Forwarded-For", "203.0.113.9")],
        )
    assert response.status_code == 401
    assert [line["client"] for line in audit_trail.lines()] == [PEER]


# --- the middleware on its own -----------------------------------------------------------------


async def _client_seen(
    trusted: tuple[Network, ...], headers: list[tuple[bytes, bytes]], client: Any = (PEER, 5555)
) -> Any:
    """The ``scope["client"]`` the next app sees behind :class:`TrustedProxies`."""
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        del receive, send
        seen.append(scope.get("client"))

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        del message

    scope = {"type": "http", "headers": headers, "client": client}
    await TrustedProxies(app, trusted=trusted)(scope, receive, send)
    (found,) = seen
    return found


async def test_middleware_rewrites_the_client_only_from_a_trusted_peer() -> None:
    """Spoofing: only a trusted peer's X-Forwarded-For replaces the client; the port stays."""
    header = [(b"x-forwarded-for", b"198.51.100.1")]
    assert await _client_seen(TRUST_LOOPBACK, header) == ("198.51.100.1", 5555)
    assert await _client_seen((), header) == (PEER, 5555)
    assert await _client_seen(TRUST_LOOPBACK, header, ("192.0.2.1", 1)) == ("192.0.2.1", 1)
    assert await _client_seen(TRUST_LOOPBACK, header, None) is None


async def test_middleware_joins_header_lines_in_order() -> None:
    """Several X-Forwarded-For lines are one list, walked from the last line's last entry."""
    headers = [(b"x-forwarded-for", b"203.0.113.1, 198.51.100.1"), (b"x-forwarded-for", b"::1")]
    assert await _client_seen(TRUST_LOOPBACK, headers) == ("198.51.100.1", 5555)


@pytest.mark.parametrize(("junk", "marker"), JUNK)
async def test_middleware_never_puts_non_ip_text_in_the_client(junk: str, marker: str) -> None:
    """Log injection: whatever the header holds, ``scope["client"]`` stays an IP address."""
    del marker
    headers = [(b"x-forwarded-for", junk.encode("latin-1"))]
    host, _ = await _client_seen(TRUST_LOOPBACK, headers)
    assert host == PEER


# --- the pure address picking ----------------------------------------------------------------

TRUSTED = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"), ip_network("127.0.0.1/32"))


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("10.1.1.1", "198.51.100.1", "198.51.100.1"),
        ("10.1.1.1", "203.0.113.1, 198.51.100.1", "198.51.100.1"),
        ("10.1.1.1", "203.0.113.1, 198.51.100.1, 10.2.2.2, 10.3.3.3", "198.51.100.1"),
        ("10.1.1.1", "10.9.9.9, 10.8.8.8", "10.9.9.9"),
        ("10.1.1.1", " 198.51.100.1 ,10.2.2.2 ", "198.51.100.1"),
        ("10.1.1.1", "198.51.100.1:8443", "198.51.100.1"),
        ("10.1.1.1", "2001:db8::1", "2001:db8::1"),
        ("10.1.1.1", "[2001:db8::1]", "2001:db8::1"),
        ("10.1.1.1", "[2001:db8::1]:443, fd00::5", "2001:db8::1"),
        ("10.1.1.1", "2001:DB8:0:0::1", "2001:db8::1"),
        ("10.1.1.1", "::ffff:198.51.100.1", "198.51.100.1"),
        ("10.1.1.1", "::ffff:10.2.2.2, 10.3.3.3", "10.2.2.2"),
        ("fd00::1", "198.51.100.1", "198.51.100.1"),
        ("::ffff:10.1.1.1", "198.51.100.1", "198.51.100.1"),
        ("10.1.1.1", "evil, 198.51.100.1", "198.51.100.1"),
    ],
    ids=[
        "single",
        "rightmost-untrusted",
        "skip-trusted-hops",
        "all-trusted-leftmost",
        "whitespace",
        "ipv4-port",
        "ipv6",
        "ipv6-brackets",
        "ipv6-brackets-port",
        "ipv6-canonical",
        "ipv4-mapped",
        "ipv4-mapped-trusted",
        "ipv6-peer",
        "ipv4-mapped-peer",
        "junk-left-of-client-unread",
    ],
)
def test_pick_client_walks_right_to_left(peer: str, header: str, expected: str) -> None:
    """Spoofing: from a trusted peer the rightmost untrusted entry is the client."""
    assert pick_client(peer, [header], TRUSTED) == expected


@pytest.mark.parametrize(
    ("peer", "headers"),
    [
        ("198.51.100.50", ["203.0.113.1"]),
        ("10.1.1.1", []),
        ("10.1.1.1", [""]),
        ("10.1.1.1", [" , "]),
        ("10.1.1.1", ["198.51.100.1, evil"]),
        ("10.1.1.1", ["198.51.100.1,,10.2.2.2"]),
        ("10.1.1.1", ["198.51.100.1, 10.2.2.2:99999"]),
        ("10.1.1.1", ["[198.51.100.1]"]),
        ("10.1.1.1", ["198.51.100.1:80:90"]),
        ("10.1.1.1", ["[2001:db8::1]x"]),
        ("10.1.1.1", ["fe80::1%eth0"]),
        ("10.1.1.1", ["for=198.51.100.1"]),
        ("10.1.1.1", ["1.2.3.4\nforged"]),
        ("10.1.1.1", ["\u0661.2.3.4"]),
        ("not-an-ip", ["198.51.100.1"]),
    ],
    ids=[
        "untrusted-peer",
        "no-header",
        "empty-header",
        "empty-entries",
        "junk-on-the-walk",
        "empty-entry-on-the-walk",
        "bad-port",
        "ipv4-in-brackets",
        "ipv6-port-without-brackets",
        "junk-after-brackets",
        "ipv6-scope-id",
        "forwarded-syntax",
        "newline",
        "non-ascii-digit",
        "peer-not-an-ip",
    ],
)
def test_pick_client_keeps_the_peer(peer: str, headers: list[str]) -> None:
    """Spoofing: an untrusted peer, no header or junk on the walk keeps the peer."""
    assert pick_client(peer, headers, TRUSTED) == peer


def test_pick_client_trusts_nothing_by_default() -> None:
    """Default: with no trusted networks even a loopback peer's header is ignored."""
    assert pick_client(PEER, ["203.0.113.9"], ()) == PEER


def test_parse_address_returns_only_canonical_addresses() -> None:
    """Log injection: whatever parses comes back as the address alone, never the input text."""
    assert str(parse_address(" [2001:DB8::1]:80 ")) == "2001:db8::1"
    assert str(parse_address("198.51.100.1:80")) == "198.51.100.1"
    assert parse_address("198.51.100.1:") is None
    assert parse_address("") is None


# --- the setting -------------------------------------------------------------------------------


def test_trusted_proxies_setting_parses_cidrs_and_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOKEN_BROKER_TRUSTED_PROXIES: comma-separated IPv4/IPv6 CIDRs or addresses; empty default."""
    monkeypatch.delenv("TOKEN_BROKER_TRUSTED_PROXIES", raising=False)
    assert Settings(config=tmp_path / "c.yaml").trusted_proxies == ()
    monkeypatch.setenv("TOKEN_BROKER_TRUSTED_PROXIES", " 10.1.2.3/8 , 192.0.2.1, fd00::/8,::1 ")
    parsed = Settings(config=tmp_path / "c.yaml").trusted_proxies
    assert [str(network) for network in parsed] == [
        "10.0.0.0/8",
        "192.0.2.1/32",
        "fd00::/8",
        "::1/128",
    ]


@pytest.mark.parametrize(
    "value", ["10.0.0.0/8,secret-junk", "10.0.0.0/8,,10.1.0.0/16", "10.0.0.0/33", "fe80::1%eth0"]
)
def test_bad_trusted_proxies_name_the_entry_without_echoing_it(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Misconfiguration: a bad entry fails the settings, naming its position, not its text."""
    monkeypatch.setenv("TOKEN_BROKER_TRUSTED_PROXIES", value)
    with pytest.raises(ValidationError) as caught:
        Settings(config=tmp_path / "c.yaml")
    message = str(caught.value)
    assert "is not an IP address or CIDR (expected e.g. 10.0.0.0/8)" in message
    assert value not in message
    assert "secret-junk" not in message
    assert "eth0" not in message


def test_check_config_reports_a_bad_trusted_proxy_without_echoing_it(files: BrokerFiles) -> None:
    """Misconfiguration: the CLI names the variable and entry, exits 2, never prints the text."""
    env = broker_env(
        TOKEN_BROKER_CONFIG=str(files.config),
        TOKEN_BROKER_TRUSTED_PROXIES="10.0.0.0/8,secret-junk",
    )
    result = run_cli(["check-config"], env)
    assert result.returncode == 2
    assert (
        "TOKEN_BROKER_TRUSTED_PROXIES: entry 2 is not an IP address or CIDR "
        "(expected e.g. 10.0.0.0/8)" in result.stderr
    )
    assert "secret-junk" not in result.stdout + result.stderr
