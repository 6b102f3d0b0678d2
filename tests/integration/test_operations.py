"""Operating the broker: admin API, cross-replica invalidation, hot reload, metrics, request ids.

Real Redis and the real oidc-provider; several in-process replicas share one Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from service.observe.logs import REQUEST_ID, JsonFormatter, RequestIdFilter
from service.store.crypto import TokenCipher, new_cache_key, parse_cache_keys
from tests.support import OidcProvider
from tests.support.audit_trail import AuditTrail
from tests.support.broker import (
    BrokerFiles,
    bearer,
    new_key,
    running_broker,
    write_config,
)
from tests.support.broker_process import start_broker, stop_broker, wait_ready


def admin_config(tmp_path: Path, issuer: OidcProvider) -> BrokerFiles:
    """The usual callers plus ``secops`` with the admin role (and no grants)."""
    return write_config(
        tmp_path,
        issuer,
        callers={
            "airflow": {"grants": [{"profile": "ingestion", "max_ttl": "4h"}]},
            "reader": {"grants": [{"profile": "ingestion", "scopes": ["read"]}]},
            "secops": {"roles": ["admin"], "grants": []},
        },
    )


async def _token(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    return await client.post(
        "/v1/token", json={"profile": "ingestion", **body}, headers=bearer(key)
    )


def _admin_lines(trail: AuditTrail) -> list[dict[str, Any]]:
    return [line for line in trail.lines() if line["event"] == "admin"]


async def test_profiles_view_is_for_admins_and_shows_no_token_or_secret(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, audit_trail: AuditTrail
) -> None:
    """GET /v1/profiles: 403 for a non-admin (audited); for an admin the issuer, auth method,
    last exchange, cached expiry per scope set and secret age, and never a token or secret.
    """
    files = admin_config(tmp_path, issuer)
    async with running_broker(files.settings(redis_url)) as client:
        token = (await _token(client, files.keys["airflow"])).json()["access_token"]
        await _token(client, files.keys["reader"], scopes=["read"])
        refused = await client.get("/v1/profiles", headers=bearer(files.keys["airflow"]))
        view = await client.get("/v1/profiles", headers=bearer(files.keys["secops"]))
    assert refused.status_code == 403
    assert refused.json()["error"] == "unauthorized_client"
    assert view.status_code == 200, view.text
    (profile,) = view.json()["profiles"]
    assert profile["name"] == "ingestion"
    assert profile["issuer"] == issuer.issuer
    assert profile["auth_method"] == "client_secret_basic"
    assert profile["last_exchange"]["outcome"] == "ok"
    assert profile["consecutive_failures"] == 0
    assert profile["circuit"] == "closed"
    assert sorted(tuple(c["scopes"]) for c in profile["cached"]) == [
        ("ingestion", "read", "write"),
        ("read",),
    ]
    assert all(3000 < c["expires_in"] <= 3600 for c in profile["cached"])
    assert profile["secret"]["source"].startswith("file ")
    assert 0 <= profile["secret"]["age_seconds"] < 600
    assert token not in view.text
    for secret in files.secrets:
        assert secret not in view.text
    outcomes = [(a["action"], a["outcome"], a["caller"]) for a in _admin_lines(audit_trail)]
    assert ("list_profiles", "denied", "airflow") in outcomes
    assert ("list_profiles", "ok", "secops") in outcomes


async def test_invalidate_drops_tokens_in_every_replica(
    tmp_path: Path, issuer: OidcProvider, redis_url: str, audit_trail: AuditTrail
) -> None:
    """POST /v1/profiles/ingestion/invalidate on one replica: both replicas' next request
    gets a new token from the issuer (L1s dropped over pub/sub, Redis entries deleted).
    """
    files = admin_config(tmp_path, issuer)
    settings = files.settings(redis_url)
    key = files.keys["airflow"]
    async with running_broker(settings) as a, running_broker(settings) as b:
        first = (await _token(a, key)).json()["access_token"]
        assert (await _token(b, key)).json()["access_token"] == first  # now in b's L1 too
        assert issuer.proxy.token_requests == 1
        refused = await b.post("/v1/profiles/ingestion/invalidate", headers=bearer(key))
        done = await a.post(
            "/v1/profiles/ingestion/invalidate", headers=bearer(files.keys["secops"])
        )
        fresh_b = None
        for _ in range(50):  # pub/sub delivery to b is asynchronous; bounded wait
            fresh_b = (await _token(b, key)).json()["access_token"]
            if fresh_b != first:
                break
            await asyncio.sleep(0.05)
        fresh_a = (await _token(a, key)).json()["access_token"]
        missing = await a.post(
            "/v1/profiles/no-such-profile/invalidate", headers=bearer(files.keys["secops"])
        )
    assert refused.status_code == 403
    assert done.status_code == 200, done.text
    assert done.json() == {"profile": "ingestion", "invalidated": True}
    assert fresh_b is not None
    assert fresh_b != first
    assert fresh_a == fresh_b
    assert issuer.proxy.token_requests == 2
    assert missing.status_code == 404
    assert "no-such-profile" not in missing.text
    outcomes = [(a["action"], a["outcome"], a["profile"]) for a in _admin_lines(audit_trail)]
    assert ("invalidate", "ok", "ingestion") in outcomes
    assert ("invalidate", "denied", "ingestion") in outcomes
    assert ("invalidate", "unknown_profile", None) in outcomes


async def test_invalidate_with_redis_down_says_so(tmp_path: Path, issuer: OidcProvider) -> None:
    """Without Redis reachable the other replicas cannot be told: 503, not a false success."""
    files = admin_config(tmp_path, issuer)
    settings = files.settings("redis://127.0.0.1:1/0", redis_timeout_seconds=0.2)
    async with running_broker(settings) as client:
        response = await client.post(
            "/v1/profiles/ingestion/invalidate", headers=bearer(files.keys["secops"])
        )
    assert response.status_code == 503
    assert "this replica only" in response.json()["error_description"]


async def test_config_reload_applies_a_good_file_and_rejects_a_bad_one(
    tmp_path: Path, issuer: OidcProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """A new caller added to the YAML works after the file watcher reloads it; a broken YAML
    is rejected with its problems logged, and the previous configuration stays in force.
    """
    caplog.set_level(logging.INFO)
    files = admin_config(tmp_path, issuer)
    document = yaml.safe_load(files.config.read_text())
    newcomer = new_key("newcomer")
    document["callers"]["newcomer"] = {
        "api_key_sha256": hashlib.sha256(newcomer.encode()).hexdigest(),
        "grants": [{"profile": "ingestion", "scopes": ["read"]}],
    }
    async with running_broker(files.settings(reload_seconds=0.1)) as client:
        before = await _token(client, newcomer)
        files.config.write_text(yaml.safe_dump(document))
        after = await _poll_status(client, newcomer, 200)
        document["callers"]["broken"] = {"grants": [{"profile": "no-such-profile"}]}
        document["profiles"]["ingestion"]["auth_method"] = "carrier_pigeon"
        files.config.write_text(yaml.safe_dump(document))
        rejected = await _poll_log(caplog, "configuration reload rejected")
        still = await _token(client, newcomer)
        old_caller = await _token(client, files.keys["airflow"])
    assert before.status_code == 401
    assert after.status_code == 200
    problems = rejected.problems  # type: ignore[attr-defined]
    assert any("no-such-profile" in p for p in problems)
    assert any("auth_method" in p for p in problems)
    assert still.status_code == 200
    assert old_caller.status_code == 200


async def _poll_status(client: httpx.AsyncClient, key: str, status: int) -> httpx.Response:
    response = await _token(client, key)
    for _ in range(60):
        if response.status_code == status:
            break
        await asyncio.sleep(0.05)
        response = await _token(client, key)
    return response


async def _poll_log(caplog: pytest.LogCaptureFixture, message: str) -> logging.LogRecord:
    for _ in range(60):
        for record in caplog.records:
            if record.getMessage().startswith(message):
                return record
        await asyncio.sleep(0.05)
    pytest.fail(f"no log record {message!r}")


async def test_rotated_client_secret_file_is_used_without_restart(
    tmp_path: Path, issuer: OidcProvider
) -> None:
    """A client secret file replaced in place (a Kubernetes secret update) is used by the next
    exchange: a wrong secret gives 502, the right one written back gives 200, no restart.
    """
    files = write_config(tmp_path, issuer)
    secret_file = tmp_path / "broker-basic.secret"
    right = secret_file.read_text()
    secret_file.write_text("rotated-to-something-wrong\n")
    async with running_broker(files.settings()) as client:
        wrong = await _token(client, files.keys["airflow"])
        secret_file.write_text(right)
        fixed = await _token(client, files.keys["airflow"])
    assert wrong.status_code == 502
    assert fixed.status_code == 200


async def test_rotated_cache_keys_file_encrypts_with_the_new_key(
    tmp_path: Path, issuer: OidcProvider, redis_url: str
) -> None:
    """A new key prepended to TOKEN_BROKER_CACHE_KEYS_FILE is picked up on reload: new Redis
    entries are encrypted with it, entries written under the old key still decrypt.
    """
    files = write_config(tmp_path, issuer)
    old_key, fresh_key = new_cache_key(), new_cache_key()
    keys_file = tmp_path / "cache-keys"
    keys_file.write_text(old_key + "\n")
    settings = files.settings(
        redis_url, cache_keys=None, cache_keys_file=keys_file, reload_seconds=0.1
    )
    store = redis.Redis.from_url(redis_url)
    try:
        store.flushdb()
        async with running_broker(settings) as client:
            assert (await _token(client, files.keys["airflow"])).status_code == 200
            keys_file.write_text(f"{fresh_key},{old_key}\n")
            await asyncio.sleep(0.5)  # > reload_seconds: the watcher has re-read the file
            assert (await _token(client, files.keys["reader"], scopes=["read"])).status_code == 200
            again = await _token(client, files.keys["airflow"])
        names = list(store.scan_iter(match="token-broker:v1:token:*"))
        blobs = {n: store.get(n) for n in names}
    finally:
        store.close()
    assert again.status_code == 200
    only_old = TokenCipher(parse_cache_keys(old_key))
    both = TokenCipher(parse_cache_keys(f"{fresh_key},{old_key}"))
    readable_by_old = 0
    for name, blob in blobs.items():
        assert isinstance(blob, bytes)
        both.decrypt(blob, name)  # every entry decrypts with the rotated key list
        try:
            only_old.decrypt(blob, name)
            readable_by_old += 1
        except Exception:
            continue
    assert len(blobs) == 2
    assert readable_by_old == 1


async def test_metric_names_follow_conventions_and_labels_come_from_config(
    files: BrokerFiles, issuer: OidcProvider, redis_url: str
) -> None:
    """Every series is token_broker_*; counters end in _total; no label value is request input
    even after requests full of made-up profiles, scopes, labels and paths.
    """
    junk = "zz-made-up-value"
    async with running_broker(files.settings(redis_url)) as client:
        # The registry is per process: series other tests created are not this test's concern.
        before = set(_series((await client.get("/metrics")).text))
        await _token(client, files.keys["airflow"])
        await _token(client, files.keys["airflow"], labels={"dag_id": junk})
        await _token(client, files.keys["reader"], scopes=[junk])
        await client.post(
            "/v1/token", json={"profile": junk}, headers=bearer(files.keys["airflow"])
        )
        await client.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": junk, "client_secret": junk},
        )
        await client.get(f"/{junk}")
        text = (await client.get("/metrics")).text
    assert junk not in text
    families = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))
    assert families
    for name, kind in families:
        assert name.startswith("token_broker_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
    # Series this test created (in a full run others may already exist): values from config.
    samples = [series for series in _series(text) if series not in before]
    allowed = {
        "ingestion", "(unknown)", "issued", "denied", "error", "ok", "refused", "unavailable",
        "timeout", "local", "redis", "hit", "miss", "caller", "auth_failures", "applied",
        "rejected", "list_profiles", "invalidate", "other", "fallback",
    }  # fmt: skip
    for name, labels in samples:
        for label, value in re.findall(r'(\w+)="([^"]*)"', labels):
            if label in {"le", "error"}:
                continue  # histogram buckets; RFC 6749 codes from a fixed list
            assert value in allowed, (name, label, value)


def _series(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^(token_broker_\w+)\{([^}]*)\}", text, flags=re.MULTILINE)


async def test_request_ids_are_echoed_or_made_and_reach_the_log(files: BrokerFiles) -> None:
    """A plain X-Request-ID is echoed, a malformed one replaced, a missing one generated."""
    async with running_broker(files.settings()) as client:
        given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        bad = await client.get("/healthz", headers={"X-Request-ID": "no spaces or\ttabs"})
        none = await client.get("/healthz")
    assert given.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", none.headers["x-request-id"])
    assert bad.headers["x-request-id"] != none.headers["x-request-id"]


def test_request_id_filter_tags_records_logged_while_serving() -> None:
    """Records logged inside a request carry its id in the JSON line; others do not."""
    tagger = RequestIdFilter()
    outside = logging.makeLogRecord({"msg": "idle", "name": "token_broker"})
    tagger.filter(outside)
    reset = REQUEST_ID.set("req-42")
    try:
        inside = logging.makeLogRecord({"msg": "serving", "name": "token_broker"})
        tagger.filter(inside)
    finally:
        REQUEST_ID.reset(reset)
    assert '"request_id":"req-42"' in JsonFormatter().format(inside)
    assert "request_id" not in JsonFormatter().format(outside)


def test_sighup_reloads_the_configuration_of_a_served_broker(
    tmp_path: Path, issuer: OidcProvider
) -> None:
    """`serve` with file polling off: a caller added to the YAML works only after SIGHUP."""
    files = write_config(tmp_path, issuer)
    log = tmp_path / "broker.log"
    process, url = start_broker(files, log, extra_env={"TOKEN_BROKER_RELOAD_SECONDS": "0"})
    newcomer = new_key("newcomer")
    try:
        wait_ready(url, process, log)
        document = yaml.safe_load(files.config.read_text())
        document["callers"]["newcomer"] = {
            "api_key_sha256": hashlib.sha256(newcomer.encode()).hexdigest(),
            "grants": [{"profile": "ingestion", "scopes": ["read"]}],
        }
        files.config.write_text(yaml.safe_dump(document))
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
            body = {"profile": "ingestion"}
            before = client.post("/v1/token", json=body, headers=bearer(newcomer))
            os.kill(process.pid, signal.SIGHUP)
            after = before
            for _ in range(100):  # bounded: the reload runs on the server's loop
                after = client.post("/v1/token", json=body, headers=bearer(newcomer))
                if after.status_code == 200:
                    break
                time.sleep(0.05)
    finally:
        stop_broker(process)
    assert before.status_code == 401
    assert after.status_code == 200, after.text
    assert "configuration reloaded" in log.read_text()
