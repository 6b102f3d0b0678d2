"""Partial, aborted and malformed requests over raw sockets against a served broker.

The review's finding: a client that disconnects in the middle of its body reached the
catch-all 500 handler and wrote two error-level log lines per connection, so a flood of
half-sent requests flooded the error log.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import OidcProvider
from tests.support.broker_process import BrokerProcess, module_broker

FLOOD = 40
SOCKET_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, oidc_provider: OidcProvider
) -> Iterator[BrokerProcess]:
    """One real ``token-broker serve`` (uvicorn) for the module."""
    with module_broker(oidc_provider, tmp_path_factory.mktemp("partial")) as proc:
        yield proc


def _connect(proc: BrokerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=SOCKET_TIMEOUT)
    sock.settimeout(SOCKET_TIMEOUT)
    return sock


def _exchange(proc: BrokerProcess, raw: bytes) -> bytes:
    """Send ``raw`` and read the whole answer (the server closes, or the read times out)."""
    with _connect(proc) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        deadline = time.monotonic() + SOCKET_TIMEOUT
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    assert match, answer[:200]
    return int(match.group(1))


def _error_lines(proc: BrokerProcess) -> list[str]:
    lines = []
    for line in proc.log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("level") in {"error", "critical"}:
                lines.append(line)
        if line.startswith(("ERROR", "Traceback")):
            lines.append(line)
    return lines


def _metric(proc: BrokerProcess, name: str) -> float:
    answer = _exchange(proc, b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    match = re.search(rb"^" + name.encode() + rb" ([0-9.e+]+)$", answer, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _half_sent(path: str, content_type: str, authorization: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: broker\r\nContent-Type: {content_type}\r\n"
        f"{authorization}Content-Length: 400\r\n\r\n"
    )
    return head.encode() + b"grant_type=client_cre"


def _healthy(proc: BrokerProcess) -> bool:
    answer = _exchange(proc, b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    return _status(answer) == 200


def test_a_flood_of_half_sent_bodies_logs_no_error(served: BrokerProcess) -> None:
    """Attack: many clients hang up mid-body; counted, no 500 path, no error-level log line."""
    key = served.files.keys["airflow"]
    before = _metric(served, "token_broker_client_disconnects_total")
    requests = [
        _half_sent("/oauth2/token", "application/x-www-form-urlencoded"),
        _half_sent("/v1/token", "application/json", f"Authorization: Bearer {key}\r\n"),
    ]
    for index in range(FLOOD):
        with _connect(served) as sock:
            sock.sendall(requests[index % 2])
        # closed with the body 379 bytes short
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _metric(served, "token_broker_client_disconnects_total") >= before + FLOOD:
            break
        time.sleep(0.1)
    assert _metric(served, "token_broker_client_disconnects_total") >= before + FLOOD
    assert _healthy(served)
    assert _error_lines(served) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /oauth2/token HTTP/1.1\r\nHost: b\r\nContent-Le",  # headers cut short
        b"POST /v1/token HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"GARBAGE\r\n\r\n",
        b"POST /v1/token HTTP/9.9\r\nHost: b\r\n\r\n",
        b"POST /v1/token HTTP/1.1\r\nHost: b\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/token HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /v1/token HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        b"POST /v1/token HTTP/1.1\r\nHo\x00st: b\r\n\r\n",
        (
            b"POST /oauth2/token HTTP/1.1\r\nHost: b\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 9\r\n\r\n%ff%fe=%00"
        ),
    ],
    ids=[
        "cut-headers",
        "cut-chunk",
        "garbage",
        "bad-version",
        "negative-length",
        "two-lengths",
        "bad-chunk-size",
        "nul-in-header",
        "invalid-utf8-form",
    ],
)
def test_malformed_framing_never_gets_a_5xx(served: BrokerProcess, raw: bytes) -> None:
    """Attack: broken HTTP framing; a 4xx or a closed connection, never a 5xx or an error line."""
    answer = _exchange(served, raw)
    if answer:
        assert _status(answer) < 500, answer[:300]
    assert _healthy(served)
    assert _error_lines(served) == []


def test_a_slow_client_does_not_block_others(served: BrokerProcess) -> None:
    """Attack: a client trickling its body holds one connection, not the broker."""
    with _connect(served) as slow:
        slow.sendall(_half_sent("/oauth2/token", "application/x-www-form-urlencoded"))
        assert _healthy(served)
        answer = _exchange(
            served,
            b"POST /oauth2/token HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n"
            b"grant_type=client_credentials",
        )
        assert _status(answer) == 401
    assert _error_lines(served) == []
