# ruff: noqa: T201, S603
"""``make demo``: a real identity provider, Redis and the broker on 127.0.0.1, driven by the CLI.

Steps (each narrated on stdout):

1. a fresh ``.demo/`` work directory (logs, config and secrets of this run);
2. the npm ``oidc-provider`` behind a counting proxy (tests/support), so the demo can show how
   many token requests really reached the issuer;
3. a real ``redis-server``, a cache encryption key and an API key for caller ``airflow``, both
   made by the ``token-broker`` CLI;
4. the broker YAML, checked by ``token-broker check-config``;
5. ``token-broker serve`` as a subprocess, waited for on ``GET /readyz``;
6. two ``token-broker token`` calls: the first goes to the issuer, the second is served from
   the cache (same token, issuer request count unchanged); the JWT is decoded and verified;
7. a request for a scope that is not granted, which the broker refuses;
8. everything started here is stopped again, also on failure or Ctrl-C.

Exit status: 0 when every expectation held, 1 when one failed, 130 on Ctrl-C / SIGTERM.
Every wait is bounded; nothing listens anywhere but 127.0.0.1. Secrets are never printed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import redis
import yaml

from tests.support.processes import (
    IDP_DIR,
    OidcProvider,
    RedisServer,
    ServiceError,
    ensure_node_modules,
    free_port,
    start_oidc_provider,
    start_redis,
)
from tests.support.tokens import verify_access_token

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / ".demo"
PROFILE = "ingestion"
CALLER = "airflow"
CLIENT_ID = "broker-basic"
GRANTED_SCOPES = ["ingestion"]
DENIED_SCOPE = "admin"
MIN_TTL = "30m"
MIN_TTL_SECONDS = 30 * 60

CLI_TIMEOUT_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
REDIS_TIMEOUT_SECONDS = 2.0
LOG_TAIL_LINES = 40
PREFIX_CHARS = 16
STEPS = 8
HTTP_OK = 200
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
INDENT = "      "


class DemoError(Exception):
    """A step could not go on; the message says why (and never holds a secret)."""


class Interrupted(Exception):
    """SIGTERM arrived; handled like Ctrl-C."""


@dataclass
class Demo:
    """What the demo started (to stop it again) and which expectations failed."""

    provider: OidcProvider | None = None
    redis_server: RedisServer | None = None
    broker: subprocess.Popen[bytes] | None = None
    broker_log: Path = WORKDIR / "broker.log"
    failures: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)

    def expect(self, ok: bool, what: str) -> bool:
        """Print ``what`` with a verdict; remember it when it did not hold."""
        print(f"{INDENT}[{'ok' if ok else 'FAILED'}] {what}")
        if not ok:
            self.failures.append(what)
        return ok


# -- narration helpers ----------------------------------------------------------------------


def step(number: int, title: str) -> None:
    """Print a step header."""
    print(f"\n[{number}/{STEPS}] {title}")


def say(text: str = "") -> None:
    """Print one indented line of narration."""
    print(f"{INDENT}{text}" if text else "")


def show(label: str, value: object) -> None:
    """Print an aligned ``label  value`` line."""
    say(f"{label:<18}{value}")


def short(token: str) -> str:
    """The first few characters of a token, never the whole of it."""
    return token[:PREFIX_CHARS] + "…"


def rel(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {rel(path)}: {exc.strerror}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


# -- processes ------------------------------------------------------------------------------


def cli_command() -> list[str]:
    """The ``token-broker`` console script of this interpreter's venv, else ``-m service``."""
    script = Path(sys.executable).parent / "token-broker"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "service"]


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without TOKEN_BROKER_* settings, never proxied for loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_BROKER_")}
    for name in ("NO_PROXY", "no_proxy"):
        present = [p for p in env.get(name, "").split(",") if p]
        env[name] = ",".join([*present, "127.0.0.1", "localhost"])
    env.update(extra or {})
    return env


def run_cli(
    args: list[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``token-broker ARGS`` with a timeout; output captured as text."""
    try:
        return subprocess.run(
            [*cli_command(), *args],
            env=base_env(env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        msg = f"token-broker {args[0]} did not finish in {CLI_TIMEOUT_SECONDS:.0f}s"
        raise DemoError(msg) from None


def checked_cli(args: list[str], env: Mapping[str, str] | None = None) -> str:
    """Run ``token-broker ARGS``; its stdout, or DemoError with its stderr."""
    result = run_cli(args, env)
    if result.returncode != 0:
        raise DemoError(
            f"token-broker {args[0]} exited {result.returncode}:\n{result.stderr.strip()}"
        )
    return result.stdout


def http_status(port: int, path: str) -> int | None:
    """GET ``path`` on 127.0.0.1:``port``; the status code, or None when nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        return None
    else:
        return response.status
    finally:
        conn.close()


def wait_ready(demo: Demo, port: int) -> float:
    """Wait for ``GET /readyz`` == 200; the seconds it took. DemoError with the log tail."""
    assert demo.broker is not None
    started = time.monotonic()
    deadline = started + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        code = demo.broker.poll()
        if code is not None:
            raise DemoError(
                f"the broker exited ({code}) before it was ready; "
                f"last lines of {rel(demo.broker_log)}:\n{tail(demo.broker_log)}"
            )
        if http_status(port, "/readyz") == HTTP_OK:
            return time.monotonic() - started
        time.sleep(0.1)
    raise DemoError(
        f"GET /readyz was not 200 within {READY_TIMEOUT_SECONDS:.0f}s; "
        f"last lines of {rel(demo.broker_log)}:\n{tail(demo.broker_log)}"
    )


def stop_broker(process: subprocess.Popen[bytes]) -> tuple[int, bool]:
    """SIGTERM the broker's process group, wait, SIGKILL it if still there: (code, killed)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    killed = False
    try:
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        killed = True
        say(f"the broker ignored SIGTERM for {STOP_TIMEOUT_SECONDS:.0f}s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
    # Nothing of its group (uvicorn workers) may outlive the demo.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return code, killed


# -- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    """One ``token-broker token`` call."""

    token: str
    source: str
    expires_in: int
    issuer_requests: int


def b64url_json(part: str) -> dict[str, Any]:
    """Decode one base64url JWT segment holding a JSON object."""
    data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if not isinstance(data, dict):
        raise DemoError("a JWT segment is not a JSON object")
    return data


def fetch(demo: Demo, client_env: Mapping[str, str], n: int) -> Fetch:
    """``token-broker token --profile ingestion --min-ttl 30m --verbose``, narrated."""
    assert demo.provider is not None
    result = run_cli(["token", "--profile", PROFILE, "--min-ttl", MIN_TTL, "--verbose"], client_env)
    if result.returncode != 0:
        raise DemoError(f"fetch #{n} failed ({result.returncode}): {result.stderr.strip()}")
    token = result.stdout.strip()
    source = re.search(r"\bsource=(\S+)", result.stderr)
    expires_in = re.search(r"\bexpires_in=(\d+)", result.stderr)
    got = Fetch(
        token=token,
        source=source.group(1) if source else "<missing>",
        expires_in=int(expires_in.group(1)) if expires_in else -1,
        issuer_requests=demo.provider.proxy.token_requests,
    )
    say(f"fetch #{n}")
    show("  source", got.source)
    show("  token", f"{short(got.token)} ({len(got.token)} chars)")
    show("  expires_in", f"{got.expires_in} s")
    show("  issuer requests", got.issuer_requests)
    demo.expect(
        result.stdout.count("\n") == 1 and token.count(".") == 2 and " " not in token,  # noqa: PLR2004
        "stdout held the token alone (one line, a JWT)",
    )
    return got


def describe_jwt(demo: Demo, token: str) -> None:
    """Print the JWT's header and main claims (never the signature); verify it via JWKS."""
    assert demo.provider is not None
    try:
        header_b64, claims_b64, _signature = token.split(".")
        header = b64url_json(header_b64)
        claims = b64url_json(claims_b64)
    except ValueError:
        raise DemoError("the token is not a decodable JWT") from None
    exp = int(claims.get("exp", 0))
    left = exp - time.time()
    say("the JWT (header and claims only; the signature is not shown):")
    show("  header.kid", header.get("kid"))
    show("  header.alg", header.get("alg"))
    show("  iss", claims.get("iss"))
    show("  aud", claims.get("aud"))
    show("  scope", claims.get("scope"))
    when = datetime.fromtimestamp(exp, UTC)
    show("  exp", f"{exp} ({when:%Y-%m-%d %H:%M:%S} UTC, {left / 60:.0f} min left)")
    demo.expect(claims.get("iss") == demo.provider.issuer, "iss is the demo issuer")
    demo.expect(left >= MIN_TTL_SECONDS, f"the token outlives --min-ttl {MIN_TTL}")
    try:
        verify_access_token(token, demo.provider.jwks(), algorithms=[str(header.get("alg"))])
    except Exception as exc:  # noqa: BLE001 - any joserfc error means "not verified"
        demo.expect(False, f"signature verified against the issuer's JWKS ({type(exc).__name__})")  # noqa: FBT003
    else:
        demo.expect(True, "signature verified against the issuer's JWKS")  # noqa: FBT003


def redis_holds_plain(redis_url: str, needles: list[str]) -> tuple[int, bool]:
    """(number of keys in Redis, whether any string/hash value contains a needle)."""
    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )
    try:
        found = False
        keys = 0
        for key in client.scan_iter(count=100):
            keys += 1
            kind = client.type(key)
            values: list[bytes] = []
            if kind == b"string":
                value = client.get(key)
                values = [value] if isinstance(value, bytes) else []
            elif kind == b"hash":
                values = [v for v in client.hgetall(key).values() if isinstance(v, bytes)]
            found = found or any(n.encode() in v for v in values for n in needles)
        return keys, found
    finally:
        client.close()


# -- the steps ------------------------------------------------------------------------------


def fresh_workdir() -> None:
    """Step 1."""
    step(1, "Fresh work directory")
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    WORKDIR.chmod(0o700)
    say(f"{rel(WORKDIR)}/ holds this run's config, secrets and logs (gitignored, mode 0700)")


def start_identity_provider(demo: Demo) -> None:
    """Step 2."""
    step(2, "Identity provider: npm oidc-provider behind a request-counting proxy")
    say(f"npm packages: {rel(IDP_DIR / 'node_modules')} (npm ci only if package-lock.json changed)")
    ensure_node_modules()
    started = time.monotonic()
    demo.provider = start_oidc_provider(WORKDIR)
    show("issuer", demo.provider.issuer)
    show("token endpoint", demo.provider.token_endpoint)
    show("clients", ", ".join(demo.provider.clients))
    show("scopes", " ".join(demo.provider.scopes))
    show("log", rel(demo.provider.log_path))
    say(f"discovery answered through the proxy ({time.monotonic() - started:.1f} s)")
    demo.secrets["client secret"] = demo.provider.client(CLIENT_ID).client_secret or ""


def start_cache_and_keys(demo: Demo) -> tuple[str, str]:
    """Step 3: (cache key, API key)."""
    step(3, "Redis, a cache encryption key and an API key (made by the token-broker CLI)")
    demo.redis_server = start_redis(WORKDIR)
    show(
        "redis-server",
        f"{demo.redis_server.url} (no persistence; log {rel(demo.redis_server.log_path)})",
    )
    cache_key = checked_cli(["new-cache-key"]).strip()
    size = len(base64.urlsafe_b64decode(cache_key + "=" * (-len(cache_key) % 4)))
    show("cache key", f"{size} random bytes for AES-GCM at rest (not shown)")
    out = checked_cli(["new-key", "--caller", CALLER])
    api_key = next((ln.strip() for ln in out.splitlines() if ln.strip().startswith("tbk_")), "")
    sha = next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "api_key_sha256:" in ln), ""
    )
    if not api_key or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise DemoError("could not find the key and its api_key_sha256 in `token-broker new-key`")
    key_id = api_key.split("_")[1]
    show("API key", f"tbk_{key_id}_… for caller '{CALLER}' (secret part not shown)")
    show("api_key_sha256", sha)
    demo.secrets["API key"] = api_key
    demo.secrets["cache key"] = cache_key
    return cache_key, sha


def write_broker_config(demo: Demo, api_key_sha256: str, broker_env: Mapping[str, str]) -> None:
    """Step 4."""
    assert demo.provider is not None
    step(4, "Broker configuration, checked by `token-broker check-config`")
    secret_file = WORKDIR / f"{CLIENT_ID}.secret"
    secret_file.write_text(demo.secrets["client secret"] + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    document = {
        "profiles": {
            PROFILE: {
                "provider": "oidc",
                "issuer": demo.provider.issuer,
                "client_id": CLIENT_ID,
                "auth_method": "client_secret_basic",
                "client_secret": {"file": str(secret_file)},
                "scopes": list(demo.provider.scopes),
            }
        },
        "callers": {
            CALLER: {
                "api_key_sha256": api_key_sha256,
                "grants": [{"profile": PROFILE, "scopes": GRANTED_SCOPES, "max_ttl": "4h"}],
            }
        },
    }
    config = Path(broker_env["TOKEN_BROKER_CONFIG"])
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    say(f"{rel(config)} (the client secret is only referenced, in {rel(secret_file)}):")
    for line in config.read_text(encoding="utf-8").splitlines():
        say(f"  | {line}")
    result = run_cli(["check-config"], broker_env)
    say("$ token-broker check-config")
    for line in (result.stdout + result.stderr).strip().splitlines():
        say(f"  > {line}")
    if not demo.expect(result.returncode == 0, "check-config accepted the configuration"):
        raise DemoError("the broker configuration was rejected")


def start_broker(demo: Demo, broker_env: Mapping[str, str]) -> None:
    """Step 5."""
    step(5, "The broker: `token-broker serve`")
    port = int(broker_env["TOKEN_BROKER_PORT"])
    with demo.broker_log.open("ab") as log:
        demo.broker = subprocess.Popen(
            [*cli_command(), "serve"],
            env=base_env(broker_env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches the demo only; the demo stops the broker
        )
    show("pid", demo.broker.pid)
    show("url", f"http://127.0.0.1:{port}")
    show("log", rel(demo.broker_log))
    took = wait_ready(demo, port)
    say(f"GET /readyz -> 200 after {took:.1f} s (cache: redis)")


def fetch_twice(demo: Demo, client_env: Mapping[str, str], redis_url: str) -> None:
    """Step 6."""
    assert demo.provider is not None
    step(
        6,
        f"Fetch a token twice: `token-broker token --profile {PROFILE} "
        f"--min-ttl {MIN_TTL} --verbose`",
    )
    say(f"as caller '{CALLER}' (env TOKEN_BROKER_URL and TOKEN_BROKER_CREDENTIAL)")
    say(f"issuer token requests so far: {demo.provider.proxy.token_requests}")
    first = fetch(demo, client_env, 1)
    second = fetch(demo, client_env, 2)
    say("the second fetch came from the broker's cache:")
    demo.expect(first.source == "issuer", "fetch #1 went to the issuer (source=issuer)")
    demo.expect(first.issuer_requests == 1, "the issuer saw exactly 1 token request")
    demo.expect(second.source == "cache", "fetch #2 was served from the cache (source=cache)")
    demo.expect(second.token == first.token, "fetch #2 returned the same token")
    demo.expect(second.issuer_requests == 1, "the issuer's token request count is still 1")
    demo.expect(0 < second.expires_in <= first.expires_in, "expires_in only went down")
    keys, plain = redis_holds_plain(redis_url, [first.token])
    demo.expect(
        keys > 0 and not plain, f"Redis holds {keys} key(s); none has the token in plain text"
    )
    describe_jwt(demo, first.token)


def denied(demo: Demo, client_env: Mapping[str, str]) -> None:
    """Step 7."""
    assert demo.provider is not None
    step(7, f"A denied request: `token-broker token --profile {PROFILE} --scope {DENIED_SCOPE}`")
    before = demo.provider.proxy.token_requests
    result = run_cli(["token", "--profile", PROFILE, "--scope", DENIED_SCOPE], client_env)
    show("exit code", result.returncode)
    for line in result.stderr.strip().splitlines():
        say(f"  > {line}")
    demo.expect(result.returncode != 0, "the CLI exited non-zero")
    demo.expect("refused" in result.stderr, "the broker refused it with an OAuth2 error")
    demo.expect(not result.stdout.strip(), "no token on stdout")
    demo.expect(demo.provider.proxy.token_requests == before, "the issuer was not asked")


def stop_everything(demo: Demo) -> None:
    """Step 8: stop what was started, each part even when another one fails to stop."""
    step(STEPS, "Stop everything the demo started")
    if demo.broker is None and demo.provider is None and demo.redis_server is None:
        say("nothing was running")
    if demo.broker is not None:
        exited = demo.broker.poll()
        code, killed = stop_broker(demo.broker)
        demo.broker = None
        if exited is not None:
            show("broker", f"had already exited (exit code {exited})")
        else:
            # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done.
            show("broker", "stopped by SIGTERM" if code == -signal.SIGTERM else f"exit code {code}")
            demo.expect(
                not killed, f"the broker stopped on SIGTERM within {STOP_TIMEOUT_SECONDS:.0f}s"
            )
        log = ""
        with contextlib.suppress(OSError):
            log = demo.broker_log.read_text(encoding="utf-8", errors="replace")
        leaked = [name for name, value in demo.secrets.items() if value and value in log]
        checked = ", ".join(demo.secrets)
        demo.expect(not leaked, f"the broker log holds no secret (checked: {checked})")
    if demo.provider is not None:
        try:
            demo.provider.stop()
            show("oidc-provider", "stopped (and its proxy)")
        except (OSError, subprocess.SubprocessError, ServiceError) as exc:
            demo.expect(False, f"oidc-provider stopped ({type(exc).__name__}: {exc})")  # noqa: FBT003
        demo.provider = None
    if demo.redis_server is not None:
        try:
            demo.redis_server.stop()
            show("redis-server", "stopped")
        except (OSError, subprocess.SubprocessError) as exc:
            demo.expect(False, f"redis-server stopped ({type(exc).__name__}: {exc})")  # noqa: FBT003
        demo.redis_server = None


# -- main -----------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    raise Interrupted


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let the (bounded) clean-up finish even if Ctrl-C is pressed again."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def run(demo: Demo) -> None:
    """Steps 1 to 7."""
    fresh_workdir()
    start_identity_provider(demo)
    cache_key, sha = start_cache_and_keys(demo)
    assert demo.redis_server is not None
    broker_port = free_port()
    broker_env = {
        "TOKEN_BROKER_CONFIG": str(WORKDIR / "broker.yaml"),
        "TOKEN_BROKER_REDIS_URL": demo.redis_server.url,
        "TOKEN_BROKER_CACHE_KEYS": cache_key,
        "TOKEN_BROKER_HOST": "127.0.0.1",
        "TOKEN_BROKER_PORT": str(broker_port),
    }
    write_broker_config(demo, sha, broker_env)
    start_broker(demo, broker_env)
    client_env = {
        "TOKEN_BROKER_URL": f"http://127.0.0.1:{broker_port}",
        "TOKEN_BROKER_CREDENTIAL": demo.secrets["API key"],
    }
    fetch_twice(demo, client_env, demo.redis_server.url)
    denied(demo, client_env)


def main() -> int:
    """Run the demo; the process exit status."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True, errors="replace")
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    print("token-broker demo: a real OIDC provider, Redis and the broker, all on 127.0.0.1")
    demo = Demo()
    status = 0
    try:
        run(demo)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; cleaning up")
        status = EXIT_INTERRUPTED
    except (DemoError, ServiceError, OSError, subprocess.SubprocessError, redis.RedisError) as exc:
        print(f"\nERROR: {exc}")
        status = EXIT_FAILED
    finally:
        with signals_ignored():
            stop_everything(demo)
    elapsed = time.monotonic() - started
    if status == 0 and demo.failures:
        status = EXIT_FAILED
    if status == 0:
        print(f"\nDemo finished: every expectation held ({elapsed:.1f} s).")
    elif demo.failures:
        print(f"\nDemo FAILED after {elapsed:.1f} s; expectations that did not hold:")
        for failure in demo.failures:
            print(f"  - {failure}")
    else:
        print(f"\nDemo stopped after {elapsed:.1f} s (exit {status}); logs are in {rel(WORKDIR)}/")
    return status


if __name__ == "__main__":
    sys.exit(main())
