"""A served broker whose stderr nobody reads: hand-outs fail closed, and no audit line is lost."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.support import OidcProvider
from tests.support.broker import bearer, write_config
from tests.support.broker_process import broker_env, stop_broker
from tests.support.processes import free_port

FLOOD_LIMIT = 20_000  # requests; the pipe (64 KiB) and the sink (1 MiB) hold a few thousand


async def _flood_until_refused(url: str, key: str) -> tuple[int, list[httpx.Response]]:
    ok = 0
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        for _ in range(FLOOD_LIMIT // 50):
            answers = await asyncio.gather(
                *(
                    client.post(
                        url + "/v1/token", json={"profile": "ingestion"}, headers=bearer(key)
                    )
                    for _ in range(50)
                )
            )
            ok += sum(a.status_code == 200 for a in answers)
            refused = [a for a in answers if a.status_code != 200]
            if refused:
                return ok, refused
    return ok, []


def _ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "broker exited"
            try:
                if client.get(url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise AssertionError("broker not ready")


async def test_stuck_stderr_fails_handouts_closed_and_every_issued_token_is_audited(
    tmp_path: Path, issuer: OidcProvider
) -> None:
    """Nobody reads stderr: after the sink's bound hand-outs get 503 + Retry-After; once the
    pipe is read, every 200 has its "issued" line and hand-outs succeed again."""
    files = write_config(tmp_path, issuer)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = broker_env(
        TOKEN_BROKER_CONFIG=str(files.config),
        TOKEN_BROKER_HOST="127.0.0.1",
        TOKEN_BROKER_PORT=str(port),
        TOKEN_BROKER_LOG_LEVEL="INFO",
        TOKEN_BROKER_RATE_LIMIT_PER_MINUTE="0",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,  # not read until the flood was refused
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(fd, 1 << 16), b"")))
    assert process.stdout is not None
    fd = process.stdout.fileno()
    try:
        _ready(url, process)
        ok, refused = await _flood_until_refused(url, files.keys["airflow"])
        assert refused, "the sink never filled"
        assert {a.status_code for a in refused} == {503}
        assert {a.headers["Retry-After"] for a in refused} == {"1"}
        assert {a.json()["error"] for a in refused} == {"temporarily_unavailable"}
        reader.start()  # the reader catches up: hand-outs are answered again
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            again = await client.post(
                url + "/v1/token",
                json={"profile": "ingestion"},
                headers=bearer(files.keys["airflow"]),
            )
        assert again.status_code == 200
        ok += 1
    finally:
        if reader.ident is None:
            reader.start()  # stopping drains the sink: someone has to read it
        stop_broker(process)  # SIGTERM: the lifespan drains the sink
        reader.join(timeout=30)
        process.stdout.close()
    lines = [json.loads(line) for line in b"".join(chunks).splitlines() if line.startswith(b"{")]
    issued = [
        line
        for line in lines
        if line.get("logger") == "token_broker.audit" and line.get("outcome") == "issued"
    ]
    assert len(issued) == ok
    assert all(line["event"] == "token" and line["request_id"] for line in issued)
