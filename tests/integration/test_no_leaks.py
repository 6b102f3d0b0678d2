"""No secret, API key or token reaches a log record or an error body, even before scrubbing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote_plus, urlsplit

import httpx
import pytest
import redis
import yaml
from joserfc.jwk import RSAKey

from service.observe.logs import JsonFormatter, TextFormatter, scrub
from tests.support import OidcProvider
from tests.support.broker import (
    BrokerFiles,
    bearer,
    new_key,
    running_broker,
    write_config,
)


async def test_logs_and_error_bodies_hold_no_secrets(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issuance, denials, bad credentials and issuer refusals leave no secret in any record."""
    files = write_config(tmp_path, issuer)
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    tokens: list[str] = []
    wrong_key = "tbk_0000_" + "s" * 30
    async with running_broker(files.settings(redis_url)) as client:
        ok = await client.post(
            "/v1/token", json={"profile": "ingestion"}, headers=bearer(files.keys["airflow"])
        )
        tokens.append(ok.json()["access_token"])
        facade = await client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "reader",
                "client_secret": files.keys["reader"],
            },
        )
        tokens.append(facade.json()["access_token"])
        for response in [
            await client.post(
                "/v1/token", json={"profile": "ingestion"}, headers=bearer(wrong_key)
            ),
            await client.post(
                "/v1/token",
                json={"profile": "ingestion", "scopes": ["write"]},
                headers=bearer(files.keys["reader"]),
            ),
            await client.post(
                "/oauth2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "airflow",
                    "client_secret": files.keys["reader"],
                },
            ),
            await client.post(
                "/v1/token",
                content=b'{"profile": "' + files.keys["airflow"].encode() + b'"}',
                headers={**bearer(files.keys["airflow"]), "content-type": "application/json"},
            ),
        ]:
            assert 400 <= response.status_code < 500
            bodies.append(response.text)
        (tmp_path / "broker-basic.secret").write_text("rotated-but-wrong")
        refused = await client.post(
            "/v1/token",
            json={"profile": "ingestion", "scopes": ["write"]},
            headers=bearer(files.keys["airflow"]),
        )
        assert refused.status_code == 502
        bodies.append(refused.text)
    needles = [*files.secrets, *tokens, wrong_key, "rotated-but-wrong"]
    assert caplog.records, "the flow should have logged audit lines"
    rendered = []
    for record in caplog.records:
        rendered.append(record.getMessage() + repr(vars(record)))
        rendered.append(JsonFormatter().format(record))
        rendered.append(TextFormatter().format(record))
    for needle in needles:
        for text in rendered + bodies:
            assert needle not in text


def test_scrub_masks_secret_shapes() -> None:
    """The last-line-of-defence filter masks keys, JWTs and Authorization values."""
    text = scrub(
        "key tbk_ab12cd34_Zm9v-YmFy_baz jwt eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln "
        "header Bearer abc.def-ghi Basic dXNlcjpwYXNz"
    )
    assert "tbk_ab12cd34" not in text
    assert "eyJ" not in text
    assert "abc.def-ghi" not in text
    assert "dXNlcjpwYXNz" not in text
    assert text.count("[redacted]") == 4


# -- a broad workload, then every place a secret could end up is scanned ---------------------


AUTH_FAILURES_PER_MINUTE = 30
"""Above the workload's own failed authentications, so only the final flood is throttled."""


@dataclass(frozen=True)
class Needle:
    """A value that must appear nowhere; failures name its ``label``, never the value."""

    label: str
    value: str


@dataclass
class Exchange:
    """One request of the workload, the status it must get, and the response it got."""

    what: str
    expected: frozenset[int]
    response: httpx.Response


class RedisMonitor:
    """Every command Redis executes while the workload runs (``MONITOR``), as raw lines.

    Catches values that were written and deleted again (locks, pub/sub messages), which a
    scan of what is left in Redis afterwards cannot see.
    """

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self.lines: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), timeout=5
        )
        self._writer = writer
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), timeout=5) == b"+OK\r\n"

        async def read() -> None:
            while line := await reader.readline():
                self.lines.append(line.decode("latin-1"))

        self._task = asyncio.create_task(read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.sleep(0.2)  # the last commands are still on their way
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


def _key_secret(key: str) -> str:
    """The ``<secret>`` of ``tbk_<id>_<secret>`` (the secret itself may contain ``_``)."""
    return key.split("_", 2)[2]


def _near_miss(key: str) -> str:
    """A wrong key: the real key's id and all but the last 6 characters of its secret."""
    return key[:-6] + ("B" * 6 if key.endswith("A" * 6) else "A" * 6)


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def _key_needles(owner: str, key: str) -> list[Needle]:
    secret = _key_secret(key)
    return [
        Needle(f"API key {owner}", key),
        Needle(f"secret part of API key {owner}", secret),
        Needle(f"first 20 characters of the secret part of API key {owner}", secret[:20]),
    ]


_PRIVATE_JWK = ("d", "p", "q", "dp", "dq", "qi")


def leak_config(directory: Path, issuer: OidcProvider) -> tuple[BrokerFiles, list[Needle]]:
    """Profiles for basic and private_key_jwt clients and one the issuer refuses; 3 callers."""
    basic, signer = issuer.client("broker-basic"), issuer.client("broker-jwt")
    assert basic.client_secret is not None
    assert signer.private_key_pem_path is not None
    wrong_secret = f"wrong-secret-{secrets.token_hex(12)}"
    (directory / "basic.secret").write_text(basic.client_secret + "\n")
    signing_key = RSAKey.generate_key(2048, private=True)
    (directory / "signing.pem").write_bytes(signing_key.as_pem(private=True))
    (directory / "wrong.secret").write_text(wrong_secret + "\n")
    profiles = {
        "ingestion": {
            "issuer": issuer.issuer,
            "client_id": basic.client_id,
            "client_secret": {"file": "basic.secret"},
            "scopes": list(issuer.scopes),
        },
        "signed": {
            "issuer": issuer.issuer,
            "client_id": signer.client_id,
            "auth_method": "private_key_jwt",
            "private_key": {"file": str(signer.private_key_pem_path)},
            "key_id": signer.kid,
            "scopes": list(issuer.scopes),
        },
        # broker-post exists at the issuer, but this is not its secret: the issuer refuses.
        "broken": {
            "issuer": issuer.issuer,
            "client_id": "broker-post",
            "auth_method": "client_secret_post",
            "client_secret": {"file": "wrong.secret"},
            "scopes": ["read"],
        },
        "minted": {"provider": "broker", "email_domain": "example.com"},
    }
    grants: dict[str, list[dict[str, Any]]] = {
        "airflow": [
            {"profile": "ingestion", "max_ttl": "4h"},
            {"profile": "signed"},
            {"profile": "broken"},
            {"profile": "minted", "principal": "ingestion-airflow"},
        ],
        "reader": [{"profile": "ingestion", "scopes": ["read"]}],
        "idle": [],
    }
    keys = {caller: new_key(caller) for caller in grants}
    callers = {
        caller: {"api_key_sha256": hashlib.sha256(keys[caller].encode()).hexdigest(), "grants": g}
        for caller, g in grants.items()
    }
    path = directory / "broker.yaml"
    signing = {
        "issuer": "http://127.0.0.1:8080",
        "keys": [{"kid": "leak-1", "private_key": {"file": "signing.pem"}}],
    }
    document = {"profiles": profiles, "callers": callers, "signing": signing}
    path.write_text(yaml.safe_dump(document))
    pem_lines = [
        line
        for line in signer.private_key_pem_path.read_text().splitlines()
        if line and not line.startswith("-----")
    ]
    needles = [
        Needle("client secret of profile ingestion", basic.client_secret),
        Needle("client secret of profile broken", wrong_secret),
        *(
            Needle(f"line {i} of the private key of profile signed", x)
            for i, x in enumerate(pem_lines)
        ),
    ]
    signing_pem = signing_key.as_pem(private=True).decode().splitlines()
    needles += [
        Needle(f"line {i} of the signing key", x)
        for i, x in enumerate(signing_pem)
        if x and not x.startswith("-----")
    ]
    private = signing_key.as_dict(private=True)
    needles += [Needle(f"signing key JWK {p}", str(private[p])) for p in _PRIVATE_JWK]
    for caller, key in keys.items():
        needles += _key_needles(f"of caller {caller}", key)
    return BrokerFiles(config=path, keys=keys), needles


async def leak_workload(
    client: httpx.AsyncClient, files: BrokerFiles, issuer: OidcProvider, wrong_keys: list[str]
) -> list[Exchange]:
    """Issuance, denials, bad credentials, issuer refusal and outage, every error status."""
    airflow, reader, idle = files.keys["airflow"], files.keys["reader"], files.keys["idle"]
    unknown, near = wrong_keys
    basic_secret = issuer.client("broker-basic").client_secret or ""
    done: list[Exchange] = []
    cc = {"grant_type": "client_credentials"}
    labels = {"dag_id": "nightly", "task_id": "ingest", "run_id": "scheduled__2026-01-01"}

    async def send(what: str, expected: int | set[int], method: str, url: str, **kw: Any) -> None:
        response = await client.request(method, url, **kw)
        codes = frozenset({expected} if isinstance(expected, int) else expected)
        done.append(Exchange(what, codes, response))

    async def v1(what: str, expected: int | set[int], key: str | None, body: Any) -> None:
        await send(
            what, expected, "POST", "/v1/token", json=body, headers=bearer(key) if key else {}
        )

    async def oauth2(what: str, expected: int | set[int], form: dict[str, str], **kw: Any) -> None:
        await send(what, expected, "POST", "/oauth2/token", data={**cc, **form}, **kw)

    def issued() -> str:
        return str(
            next(e for e in done if e.response.status_code == 200).response.json()["access_token"]
        )

    # Issuance through both endpoints, several scope sets, misses and cache hits.
    await v1("all scopes", 200, airflow, {"profile": "ingestion", "labels": labels})
    await v1("one scope", 200, airflow, {"profile": "ingestion", "scopes": ["read"]})
    await v1("two scopes", 200, airflow, {"profile": "ingestion", "scopes": ["write", "ingestion"]})
    await v1("cache hit", 200, airflow, {"profile": "ingestion", "min_ttl": "30m"})
    await v1("private_key_jwt profile", 200, airflow, {"profile": "signed", "scopes": ["read"]})
    await v1("narrowed caller", 200, reader, {"profile": "ingestion"})
    await oauth2("client_secret_post", 200, {"client_id": "reader", "client_secret": reader})
    await oauth2(
        "Basic, resource, scope",
        200,
        {"resource": "ingestion", "scope": "read write"},
        headers=_basic("airflow", airflow),
    )
    await oauth2(
        "Basic, private_key_jwt profile",
        200,
        {"resource": "signed", "scope": "ingestion"},
        headers=_basic("airflow", airflow),
    )
    # Policy denials, some with a secret where a name belongs.
    await v1("scope escalation", 403, reader, {"profile": "ingestion", "scopes": ["write"]})
    await v1("caller without grants", 403, idle, {"profile": "ingestion"})
    await v1("unknown profile", 403, airflow, {"profile": "ghost"})
    await v1("API key as profile", 403, airflow, {"profile": airflow})
    await v1("API key as scope", 403, reader, {"profile": "ingestion", "scopes": [reader]})
    await v1("min_ttl over max_ttl", 400, airflow, {"profile": "ingestion", "min_ttl": "5h"})
    await v1("min_ttl over token life", 400, airflow, {"profile": "signed", "min_ttl": "3h"})
    await oauth2(
        "API key as resource", 403, {"resource": reader}, headers=_basic("airflow", airflow)
    )
    await oauth2(
        "API key as scope (facade)",
        403,
        {"scope": airflow, "client_id": "reader", "client_secret": reader},
    )
    # Bad credentials.
    await v1("unknown API key", 401, unknown, {"profile": "ingestion"})
    await v1("wrong key sharing a real key's prefix", 401, near, {"profile": "ingestion"})
    await v1("secret part alone", 401, _key_secret(airflow), {"profile": "ingestion"})
    await v1("client secret as bearer", 401, basic_secret, {"profile": "ingestion"})
    await v1("issued token as bearer", 401, issued(), {"profile": "ingestion"})
    await v1("no credential", 401, None, {"profile": "ingestion"})
    await send(
        "Basic scheme at /v1/token",
        401,
        "POST",
        "/v1/token",
        json={"profile": "ingestion"},
        headers=_basic("airflow", airflow),
    )
    await oauth2("another caller's key", 401, {"client_id": "airflow", "client_secret": reader})
    await oauth2("near-miss key", 401, {"client_id": "airflow", "client_secret": near})
    await oauth2("API key as client_id", 401, {"client_id": airflow, "client_secret": airflow})
    await oauth2("Basic near-miss key", 401, {}, headers=_basic("airflow", near))
    await oauth2(
        "two client auth methods",
        400,
        {"client_secret": airflow},
        headers=_basic("airflow", airflow),
    )
    await oauth2(
        "issued token as client_assertion",
        {400, 401},
        {
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": issued(),
        },
    )
    # Malformed requests of every kind, with secrets inside.
    json_headers = {**bearer(airflow), "content-type": "application/json"}
    await send(
        "truncated JSON",
        400,
        "POST",
        "/v1/token",
        content=b'{"profile": "' + airflow.encode() + b'",',
        headers=json_headers,
    )
    await v1("unknown field", 400, airflow, {"profile": "ingestion", airflow: airflow})
    await v1("API key as min_ttl", 400, airflow, {"profile": "ingestion", "min_ttl": airflow})
    await v1("long label", 400, airflow, {"profile": "ingestion", "labels": {"x": airflow * 10}})
    await send(
        "no content type", 400, "POST", "/v1/token", content=airflow, headers=bearer(airflow)
    )
    await send(
        "oversized body",
        413,
        "POST",
        "/v1/token",
        content=b'{"profile": "' + airflow.encode() * 400 + b'"}',
        headers=json_headers,
    )
    await oauth2(
        "API key as grant_type",
        400,
        {"grant_type": airflow, "client_id": "reader", "client_secret": reader},
    )
    await send(
        "form that is not UTF-8",
        400,
        "POST",
        "/oauth2/token",
        content=b"\xff" + airflow.encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    await send("wrong method", 405, "GET", "/v1/token", headers=bearer(airflow))
    await send("API key in the path", 404, "POST", f"/v1/{airflow}", headers=bearer(airflow))
    await send(
        "API key in the query",
        403,
        "POST",
        "/v1/token",
        params={"key": airflow},
        json={"profile": "ghost"},
        headers=bearer(airflow),
    )
    # The issuer refuses (wrong client secret), then cannot be reached.
    await v1("issuer refuses", 502, airflow, {"profile": "broken"})
    issuer.proxy.set_fault("error503")
    try:
        await v1("issuer unavailable", 503, airflow, {"profile": "signed", "scopes": ["write"]})
    finally:
        issuer.proxy.set_fault(None)
    await v1("minted", 200, airflow, {"profile": "minted", "min_ttl": 600, "labels": labels})
    await oauth2(
        "minted via facade", 200, {"resource": "minted"}, headers=_basic("airflow", airflow)
    )
    await v1("minted over max_ttl", 400, airflow, {"profile": "minted", "min_ttl": 86400})
    await send("jwks", 200, "GET", "/.well-known/jwks.json")
    await send("openid configuration", 200, "GET", "/.well-known/openid-configuration")
    await send("healthz", 200, "GET", "/healthz")
    await send("readyz", 200, "GET", "/readyz")
    await send("metrics", 200, "GET", "/metrics")
    # Last, a flood of near misses: past the failed-authentication throttle, 429s.
    for attempt in range(AUTH_FAILURES_PER_MINUTE + 1):
        await v1(f"flood #{attempt}", {401, 429}, near, {"profile": "ingestion"})
    return done


def _raw(value: object) -> bytes:
    """A Redis reply as bytes (replies are bytes; anything else is rendered)."""
    if isinstance(value, bytes):
        return value
    return repr(value).encode()


def redis_texts(redis_url: str) -> list[tuple[str, bytes]]:
    """Every key name in Redis and every value under it, read by type and as DUMP."""
    found: list[tuple[str, bytes]] = []
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = [_raw(name) for name in client.scan_iter(count=1000)]
        assert set(keys) == {_raw(name) for name in client.keys("*")}
        for number, name in enumerate(keys):
            where = f"redis key #{number}"
            found.append((f"{where} (name)", name))
            kind = _raw(client.type(name)).decode()
            replies: list[object] = []
            if kind == "string":
                replies.append(client.get(name))
            elif kind == "hash":
                replies += [item for pair in client.hgetall(name).items() for item in pair]
            elif kind == "list":
                replies += client.lrange(name, 0, -1)
            elif kind == "set":
                replies += client.smembers(name)
            elif kind == "zset":
                replies += client.zrange(name, 0, -1)
            else:
                replies.append(client.xrange(name) if kind == "stream" else kind)
            found += [(f"{where} ({kind} value)", _raw(reply)) for reply in replies]
            # DUMP may LZF-compress a value, hence the typed reads above as well.
            found.append((f"{where} (DUMP)", _raw(client.dump(name))))
    finally:
        client.close()
    return found


def response_texts(exchanges: list[Exchange]) -> list[tuple[str, str]]:
    """Every response header and body; a token response without its own ``access_token``."""
    found: list[tuple[str, str]] = []
    for number, exchange in enumerate(exchanges):
        where = f"response #{number} ({exchange.what}, {exchange.response.status_code})"
        for name, value in exchange.response.headers.multi_items():
            found.append((f"{where} header {name}", f"{name}: {value}"))
        text = exchange.response.content.decode("latin-1")
        if exchange.response.status_code == 200 and "access_token" in text:
            body = exchange.response.json()
            # Handing the token out is the point of this response; it must be the only place.
            body.pop("access_token")
            text = repr(body)
        found.append((f"{where} body", text))
    return found


def log_texts(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    """Each record as the JSON and text formatters write it, and raw (before scrubbing)."""
    found: list[tuple[str, str]] = []
    for number, record in enumerate(records):
        where = f"log record #{number} ({record.name}: {record.msg})"
        found.append((f"{where} raw", f"{record.msg!r} {record.args!r} {vars(record)!r}"))
        found.append((f"{where} message", record.getMessage()))
        found.append((f"{where} JSON", JsonFormatter().format(record)))
        found.append((f"{where} text", TextFormatter().format(record)))
    return found


def token_needles(exchanges: list[Exchange]) -> list[Needle]:
    """Every distinct token handed out, and its signature part."""
    tokens = {
        str(e.response.json()["access_token"])
        for e in exchanges
        if e.response.status_code == 200 and "access_token" in e.response.text
    }
    needles = []
    for number, token in enumerate(sorted(tokens)):
        needles.append(Needle(f"issued token #{number}", token))
        signature = token.rsplit(".", 1)[1]
        needles.append(Needle(f"signature of issued token #{number}", signature))
        needles.append(Needle(f"first 24 characters of the signature #{number}", signature[:24]))
    return needles


async def test_broad_workload_leaves_no_secret_anywhere(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No secret, key or token in any log record, response, Redis key/value/command or metric."""
    files, needles = leak_config(tmp_path, issuer)
    wrong_keys = [new_key("airflow"), _near_miss(files.keys["airflow"])]
    needles += _key_needles("presented but unknown", wrong_keys[0])
    needles += [Needle("near-miss API key", wrong_keys[1])]
    needles += [Needle("secret part of the near-miss API key", _key_secret(wrong_keys[1]))]
    settings = files.settings(
        redis_url, auth_failures_per_minute=AUTH_FAILURES_PER_MINUTE, upstream_attempts=2
    )
    assert settings.cache_keys is not None
    needles.append(Needle("cache encryption key", settings.cache_keys.get_secret_value()))
    caplog.set_level(logging.DEBUG)
    async with RedisMonitor(redis_url) as monitor, running_broker(settings) as client:
        exchanges = await leak_workload(client, files, issuer, wrong_keys)
        metrics = await client.get("/metrics")

    # The workload did what it claims, or a clean scan would prove nothing.
    wrong = [
        f"{e.what}: {e.response.status_code} {e.response.text[:200]}"
        for e in exchanges
        if e.response.status_code not in e.expected
    ]
    assert not wrong, "\n".join(wrong)
    assert caplog.records
    assert any('"SET"' in line.upper() for line in monitor.lines), "MONITOR saw no writes"
    needles += token_needles(exchanges)
    assert sum(n.label.startswith("issued token") for n in needles) >= 4

    # "httpx" is this test's own in-process client logging the URLs it was told to call (one
    # holds a key on purpose); the broker's outbound client logs as "httpx2" and is scanned.
    records = [r for r in caplog.records if r.name != "httpx"]
    in_redis = redis_texts(redis_url)
    assert in_redis, "the workload should have left tokens in Redis"
    haystacks: list[tuple[str, str | bytes]] = [
        *log_texts(records),
        *response_texts(exchanges),
        *in_redis,
        *((f"redis MONITOR line #{i}", line) for i, line in enumerate(monitor.lines)),
        ("metrics exposition", metrics.text),
    ]
    hits = []
    for needle in needles:
        for where, text in haystacks:
            found = (
                needle.value.encode() in text if isinstance(text, bytes) else needle.value in text
            )
            if found:
                hits.append(f"{needle.label} found in {where}")
    assert not hits, "\n".join(hits)
