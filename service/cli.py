"""``token-broker``: serve, check-config, new-key, new-cache-key, admin; token, exec, sidecar and
doctor come from the runner (service/runner/cli.py)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from service.callers.api_keys import key_hash, new_api_key
from service.errors import ConfigError
from service.runner.oauth2 import DEFAULT_BROKER_URL

app = typer.Typer(
    name="token-broker",
    help="Hands short-lived OIDC tokens to ingestion runners; holds the client secrets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("token-broker")
    except PackageNotFoundError:
        # Run from a source tree that was never installed.
        from service import __version__  # noqa: PLC0415

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"token-broker {_version()}")
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Hands short-lived OIDC tokens to ingestion runners; holds the client secrets."""
    del version


def _settings(config: Path | None) -> object:
    from pydantic import ValidationError  # noqa: PLC0415

    from service.config.settings import Settings  # noqa: PLC0415

    try:
        return Settings(config=config) if config else Settings()
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            typer.echo(f"  - TOKEN_BROKER_{loc.upper()}: {err['msg']}", err=True)
        raise typer.Exit(2) from None


def _problems(exc: ConfigError) -> None:
    typer.echo(f"configuration has {len(exc.problems)} problem(s):", err=True)
    for problem in exc.problems:
        typer.echo(f"  - {problem}", err=True)


ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Broker YAML (default: $TOKEN_BROKER_CONFIG).")
]


@app.command("check-config")
def check_config(
    config: ConfigOption = None,
    connect: Annotated[
        bool,
        typer.Option(
            "--connect",
            help="Also reach Redis and every issuer (no secret sent); exit 1 if any fails.",
        ),
    ] = False,
) -> None:
    """Validate the settings and broker YAML; list every problem; exit 1 if any."""
    from service.config.settings import Settings  # noqa: PLC0415
    from service.runtime import load_checked  # noqa: PLC0415

    settings = _settings(config)
    assert isinstance(settings, Settings)
    try:
        loaded = load_checked(settings)
    except ConfigError as exc:
        _problems(exc)
        raise typer.Exit(1) from None
    typer.echo(
        f"ok: {len(loaded.profiles)} profile(s), {len(loaded.callers)} caller(s) "
        f"in {settings.config}"
    )
    for warning in _signing_warnings(loaded):
        typer.echo(f"warning: {warning}", err=True)
    if connect:
        from service.config.reachability import check_all  # noqa: PLC0415

        results = check_all(settings, loaded)
        for result in results:
            typer.echo(result.line())
        if not all(result.ok for result in results):
            raise typer.Exit(1)


def _signing_warnings(config: Any) -> list[str]:
    """Keys that are published but do not sign: kept only while tokens they signed live."""
    if config.signing is None:
        return []
    longest = max(
        (
            rule.max_ttl or 0
            for caller in config.callers
            for profile in config.profiles.values()
            if profile.spec.provider == "broker"
            and (rule := config.policy.rule(caller, profile.name)) is not None
        ),
        default=0,
    )
    return [
        f"signing key '{key.kid}' is published but does not sign; remove it after the longest "
        f"token it signed has expired (max_ttl {longest} s after it stopped signing)"
        for key in config.signing.keys[1:]
    ]


@app.command("new-signing-key")
def new_signing_key(
    kid: Annotated[str, typer.Option("--kid", help="Key id: letters, digits, '.', '_', '-'.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the PEM (mode 0600).")],
) -> None:
    """Write a new 3072-bit RSA signing key (PEM, 0600) and print the YAML line for signing.keys."""
    import os  # noqa: PLC0415
    import re  # noqa: PLC0415

    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", kid):
        typer.echo("--kid: 1 to 64 letters, digits, '.', '_' or '-'", err=True)
        raise typer.Exit(2)
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: never overwrite a key (it may be the one signing today); 0600 from the
        # start, so the key is never readable by others even for an instant.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        typer.echo(f"{out} exists; refusing to overwrite a key", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"{out}: cannot create ({exc.strerror})", err=True)
        raise typer.Exit(1) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    typer.echo("# under signing.keys (second while OpenMetadata fetches it, then first):")
    typer.echo(f"- {{kid: {kid}, private_key: {{file: {out}}}}}")


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (default: $TOKEN_BROKER_HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=0, max=65535, help="Listen port (default: $TOKEN_BROKER_PORT)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, max=64, help="Worker processes (default: $TOKEN_BROKER_WORKERS)."
        ),
    ] = None,
) -> None:
    """Run the HTTP API (uvicorn; TOKEN_BROKER_HOST/PORT/WORKERS)."""
    import os  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    from service.config.settings import Settings  # noqa: PLC0415
    from service.observe.logs import configure_logging  # noqa: PLC0415
    from service.runtime import load_checked  # noqa: PLC0415

    # Through the environment, not Settings(...) arguments: worker processes build their
    # settings from it, and the flag must win there too.
    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"TOKEN_BROKER_{name}"] = str(value)
    settings = _settings(config)
    assert isinstance(settings, Settings)
    try:
        load_checked(settings)
    except ConfigError as exc:
        _problems(exc)
        raise typer.Exit(1) from None
    if config is not None:
        # Workers build their own settings from the environment.
        os.environ["TOKEN_BROKER_CONFIG"] = str(config)
    configure_logging(settings.log_level)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal it captured; this
    # handler (restored by uvicorn before it re-raises) turns that into exit status 0, so
    # orchestrators see a clean stop rather than a kill.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "service.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # uvloop + httptools set TCP_NODELAY; the asyncio loop with workers does not.
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=20,
        # uvicorn would believe X-Forwarded-For from loopback; api/middleware/proxies.py decides.
        proxy_headers=False,
    )


def _exit_cleanly(signum: int, frame: object) -> None:
    del signum, frame
    raise SystemExit(0)


@app.command("new-key")
def new_key(
    caller: Annotated[str, typer.Option(help="Caller name in the broker YAML.")],
    as_json: Annotated[
        bool,
        typer.Option("--json", help='One JSON object: {"caller", "key", "api_key_sha256"}.'),
    ] = False,
) -> None:
    """Print a new API key once, and the config line that admits it."""
    key = new_api_key()
    if as_json:
        import json  # noqa: PLC0415

        typer.echo(json.dumps({"caller": caller, "key": key, "api_key_sha256": key_hash(key)}))
        return
    typer.echo(f"API key for caller '{caller}' (shown once; store it in your secret manager):")
    typer.echo(key)
    typer.echo("")
    typer.echo("Add to the broker YAML:")
    typer.echo(f"callers:\n  {caller}:\n    api_key_sha256: {key_hash(key)}")


@app.command("new-cache-key")
def new_cache_key() -> None:
    """Print a new cache encryption key for TOKEN_BROKER_CACHE_KEYS."""
    from service.store.crypto import new_cache_key as make  # noqa: PLC0415

    typer.echo(make())


UrlOption = Annotated[str, typer.Option(envvar="TOKEN_BROKER_URL", help="Broker base URL.")]

# The runner's commands are parsed by the runner itself (service/runner/cli.py), so their
# flags and --help are the same in the .pyz, the wheel and here; typer only lists them.
_PASS_THROUGH: dict[str, Any] = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def _runner(command: str, ctx: typer.Context) -> None:
    from service.runner import cli as runner_cli  # noqa: PLC0415

    raise typer.Exit(runner_cli.main([command, *ctx.args], prog="token-broker"))


@app.command(**_PASS_THROUGH)
def token(ctx: typer.Context) -> None:
    """Ask a running broker for a token and print it (or write it to a file)."""
    _runner("token", ctx)


@app.command("exec", **_PASS_THROUGH)
def exec_(ctx: typer.Context) -> None:
    """Fetch a token into $OM_JWT_TOKEN (never argv), then become CMD."""
    _runner("exec", ctx)


@app.command(**_PASS_THROUGH)
def sidecar(ctx: typer.Context) -> None:
    """Keep a fresh token in a file and on a loopback port (or fetch it once)."""
    _runner("sidecar", ctx)


@app.command(**_PASS_THROUGH)
def doctor(ctx: typer.Context) -> None:
    """Check that OpenMetadata accepts the profile's tokens; name the setting to change if not."""
    _runner("doctor", ctx)


admin_app = typer.Typer(
    name="admin",
    help="For the secret team, over the admin API (a caller with the admin role).\n\n"
    "Credential: TOKEN_BROKER_CREDENTIAL or TOKEN_BROKER_CREDENTIAL_FILE, as for `token`.",
    no_args_is_help=True,
)
app.add_typer(admin_app)

JsonOption = Annotated[bool, typer.Option("--json", help="The broker's JSON answer, unformatted.")]


def _admin(
    url: str, method: str, path: str, params: dict[str, str] | None = None
) -> dict[str, Any]:
    from service.runner.client import ClientError, admin_call, credential_from_env  # noqa: PLC0415

    try:
        return admin_call(url, credential_from_env(), method, path, params=params)
    except ClientError as exc:
        if exc.status == 401:  # noqa: PLR2004
            message = f"the broker refused the credential: {exc.detail}"
        elif exc.status == 403:  # noqa: PLR2004
            message = "this caller lacks the admin role"
        elif exc.status == 404:  # noqa: PLR2004
            message = exc.detail
        else:
            message = str(exc)
        typer.echo(f"token-broker admin: {message}", err=True)
        raise typer.Exit(1) from None


def _print_json(body: dict[str, Any]) -> None:
    import json  # noqa: PLC0415

    typer.echo(json.dumps(body, indent=2))


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _span(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@admin_app.command("profiles")
def admin_profiles(url: UrlOption = DEFAULT_BROKER_URL, as_json: JsonOption = False) -> None:
    """Each profile: issuer, circuit state, last exchange, cached scope sets (never a token)."""
    body = _admin(url, "GET", "/v1/profiles")
    if as_json:
        _print_json(body)
        return
    profiles = body.get("profiles", [])
    rows = []
    for profile in profiles:
        last = profile.get("last_exchange") or {}
        rows.append(
            [
                str(profile["name"]),
                str(profile.get("issuer") or profile.get("token_endpoint") or "-"),
                str(profile.get("circuit", "-")),
                f"{last['time']} {last['outcome']}" if last else "-",
            ]
        )
    _table(["PROFILE", "ISSUER", "CIRCUIT", "LAST EXCHANGE"], rows)
    cached = [
        [
            str(profile["name"]),
            " ".join(entry["scopes"]) or "-",
            _span(entry["expires_in"]),
            str(entry["expires_at"]),
            str(entry.get("fingerprint", "-")),
        ]
        for profile in profiles
        for entry in profile.get("cached", [])
    ]
    typer.echo("")
    if cached:
        _table(["PROFILE", "CACHED SCOPES", "EXPIRES IN", "EXPIRES AT", "FINGERPRINT"], cached)
    else:
        typer.echo("no cached tokens in this replica")


def _credential_text(credential: dict[str, Any]) -> str:
    kind = credential.get("kind")
    if kind == "api_key":
        return "api_key" if credential.get("keys", 1) == 1 else f"api_key ({credential['keys']})"
    if kind == "kubernetes":
        text = f"kubernetes {credential['namespace']}/{credential['service_account']}"
        if credential.get("pod"):
            text += f" pod={credential['pod']}"
        return text + (f" issuer={credential['issuer']}" if credential.get("issuer") else "")
    if kind == "workload":
        return f"workload {credential['issuer']} sub={credential['subject']}"
    return str(kind)


@admin_app.command("policy")
def admin_policy(
    profile: Annotated[
        str | None, typer.Option("--profile", help="Only callers granted this profile.")
    ] = None,
    caller: Annotated[str | None, typer.Option("--caller", help="Only this caller.")] = None,
    url: UrlOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Who may get what: each caller's credentials, roles and grants (never key hashes)."""
    params = {name: value for name, value in (("profile", profile), ("caller", caller)) if value}
    body = _admin(url, "GET", "/v1/policy", params)
    if as_json:
        _print_json(body)
        return
    rows: list[list[str]] = []
    for entry in body.get("callers", []):
        credentials = ", ".join(_credential_text(c) for c in entry.get("credentials", [])) or "-"
        who = [str(entry["name"]), credentials, ",".join(entry.get("roles", [])) or "-"]
        # A caller without grants still gets a row: an admin-only caller is part of the answer.
        grants = entry.get("grants") or [{"profile": "-", "scopes": [], "max_ttl": None}]
        rows.extend(
            [*who, str(g["profile"]), " ".join(g["scopes"]) or "-", _span(g.get("max_ttl"))]
            for g in grants
        )
    _table(["CALLER", "CREDENTIALS", "ROLES", "PROFILE", "SCOPES", "MAX TTL"], rows)


@admin_app.command("invalidate")
def admin_invalidate(
    profile: Annotated[str, typer.Argument(help="Profile whose cached tokens to drop.")],
    url: UrlOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,
) -> None:
    """Drop the profile's cached tokens in every replica; the next request asks the issuer."""
    from urllib.parse import quote  # noqa: PLC0415

    body = _admin(url, "POST", f"/v1/profiles/{quote(profile, safe='')}/invalidate")
    if as_json:
        _print_json(body)
        return
    typer.echo(f"dropped the cached tokens of profile '{profile}' in every replica")


def main() -> None:
    """Console entry point."""
    argv = sys.argv[1:]
    if argv[:1] and argv[0] in {"token", "exec", "sidecar", "doctor"}:
        # Straight to the runner: click would swallow a `--` that `exec` must see.
        from service.runner import cli as runner_cli  # noqa: PLC0415

        raise SystemExit(runner_cli.main(argv, prog="token-broker"))
    app()
