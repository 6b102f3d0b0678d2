"""``token-broker``: serve, check-config, new-key, new-cache-key, token, exec, sidecar, admin."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.callers.api_keys import key_hash, new_api_key
from service.errors import ConfigError

if TYPE_CHECKING:
    from service.runner.client import FetchedToken

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
    if connect:
        from service.config.reachability import check_all  # noqa: PLC0415

        results = check_all(settings, loaded)
        for result in results:
            typer.echo(result.line())
        if not all(result.ok for result in results):
            raise typer.Exit(1)


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


ScopeOption = Annotated[
    list[str] | None, typer.Option("--scope", help="Scope to request (repeatable).")
]
MinTtlOption = Annotated[
    str, typer.Option("--min-ttl", help="The token must stay valid this long: 3600, 90m, 4h.")
]
UrlOption = Annotated[str, typer.Option(envvar="TOKEN_BROKER_URL", help="Broker base URL.")]
LabelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        help="key=value for the broker's audit line (repeatable); AIRFLOW_CTX_* are added.",
    ),
]
DEFAULT_BROKER_URL = "http://127.0.0.1:8080"


def _duration(option: str, value: str) -> int:
    from service.durations import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(value)
    except ValueError as exc:
        typer.echo(f"{option}: {exc}", err=True)
        raise typer.Exit(2) from None


def _labels(options: list[str] | None) -> dict[str, str]:
    from service.runner.client import MAX_LABELS, parse_label, run_labels  # noqa: PLC0415

    explicit: dict[str, str] = {}
    for text in options or ():
        try:
            key, value = parse_label(text)
        except ValueError as exc:
            typer.echo(f"--label: {exc}", err=True)
            raise typer.Exit(2) from None
        explicit[key] = value
    if len(explicit) > MAX_LABELS:
        typer.echo(f"--label: at most {MAX_LABELS} labels", err=True)
        raise typer.Exit(2)
    return run_labels(explicit)


def _fetch(
    url: str, profile: str, scopes: list[str] | None, min_ttl: int, labels: dict[str, str]
) -> FetchedToken:
    from service.runner.client import ClientError, credential_from_env, fetch_token  # noqa: PLC0415

    try:
        return fetch_token(
            url,
            credential_from_env(),
            profile=profile,
            scopes=scopes,
            min_ttl=min_ttl,
            labels=labels,
        )
    except ClientError as exc:
        typer.echo(f"token-broker: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def token(  # noqa: PLR0917 (typer maps each parameter to an option)
    profile: Annotated[str, typer.Option(help="Profile to get a token for.")],
    scope: ScopeOption = None,
    min_ttl: MinTtlOption = "0",
    url: UrlOption = DEFAULT_BROKER_URL,
    label: LabelOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to FILE (atomically, mode 0600) instead of stdout."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The broker's JSON answer instead of the bare token.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Describe the token on stderr.")
    ] = False,
) -> None:
    """Ask a running broker for a token and print it alone on stdout (or write it to a file).

    Credential: TOKEN_BROKER_CREDENTIAL, else the file TOKEN_BROKER_CREDENTIAL_FILE, else
    the projected token at /var/run/secrets/token-broker/token when it exists.
    """
    import json  # noqa: PLC0415

    from service.runner.client import write_private_file  # noqa: PLC0415

    seconds = _duration("--min-ttl", min_ttl)
    labels = _labels(label)
    if output is not None and not output.parent.is_dir():
        typer.echo(f"--output: directory {output.parent} does not exist", err=True)
        raise typer.Exit(2)
    fetched = _fetch(url, profile, scope, seconds, labels)
    text = json.dumps(dict(fetched.body)) if as_json else fetched.access_token
    if verbose:
        typer.echo(
            f"profile={profile} source={fetched.source} expires_in={fetched.expires_in} "
            f"scope={fetched.scope!r}",
            err=True,
        )
    if output is None:
        sys.stdout.write(text + "\n")
        return
    try:
        # No trailing newline: readers that use the file content verbatim as a header work.
        write_private_file(output, text)
    except OSError as exc:
        typer.echo(f"--output: cannot write {output}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None


_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
    no_args_is_help=True,
)
def exec_(  # noqa: PLR0917 (typer maps each parameter to an option)
    profile: Annotated[str, typer.Option(help="Profile to get a token for.")],
    command: Annotated[list[str], typer.Argument(metavar="CMD [ARGS]...", show_default=False)],
    scope: ScopeOption = None,
    min_ttl: MinTtlOption = "0",
    env: Annotated[
        str, typer.Option("--env", help="Environment variable that receives the token.")
    ] = "OM_JWT_TOKEN",
    url: UrlOption = DEFAULT_BROKER_URL,
    label: LabelOption = None,
) -> None:
    """Fetch a token into $OM_JWT_TOKEN (never argv), then become CMD.

    CMD replaces this process, so signals reach it and its exit status is the status.

    CMD does not see TOKEN_BROKER_CREDENTIAL. Without a token CMD is not run: status 1.
    """
    import os  # noqa: PLC0415
    import re  # noqa: PLC0415

    if not re.fullmatch(_ENV_NAME, env):
        typer.echo("--env: not an environment variable name", err=True)
        raise typer.Exit(2)
    seconds = _duration("--min-ttl", min_ttl)
    fetched = _fetch(url, profile, scope, seconds, _labels(label))
    child_env = dict(os.environ)
    # The command needs the token, not the credential that can mint more of them.
    child_env.pop("TOKEN_BROKER_CREDENTIAL", None)
    child_env[env] = fetched.access_token
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, child_env)  # noqa: S606
    except OSError as exc:
        # The shell's conventions: 127 not found, 126 found but not executable.
        status = 127 if isinstance(exc, FileNotFoundError) else 126
        typer.echo(f"token-broker exec: cannot run {command[0]}: {exc.strerror}", err=True)
        raise typer.Exit(status) from None


@app.command()
def sidecar(  # noqa: PLR0917 (typer maps each parameter to an option)
    profile: Annotated[str, typer.Option(help="Profile to get a token for.")],
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Keep the token in FILE (atomic replace, mode 0600)."),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            help="Serve GET /token, POST /oauth2/token, GET /healthz on this loopback HOST:PORT.",
        ),
    ] = None,
    min_ttl: MinTtlOption = "0",
    scope: ScopeOption = None,
    label: LabelOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Fetch, write FILE and exit (init containers).")
    ] = False,
    timeout: Annotated[
        str, typer.Option("--timeout", help="--once: give up after this long.")
    ] = "60s",
    max_backoff: Annotated[
        str, typer.Option("--max-backoff", help="Longest wait between retries.")
    ] = "60s",
    url: UrlOption = DEFAULT_BROKER_URL,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="TOKEN_BROKER_LOG_LEVEL", help="Log level.")
    ] = "INFO",
) -> None:
    """Keep a fresh token in a file and on a loopback port (or, with --once, fetch it once).

    Refreshes after two thirds of the token's usable life (its life beyond --min-ttl).

    Retries with jittered exponential backoff while the broker is down.

    Never hands out a token with less than --min-ttl left: 503, and the file is removed.
    """
    import asyncio  # noqa: PLC0415

    from service.observe.logs import configure_logging  # noqa: PLC0415
    from service.runner import sidecar as runner  # noqa: PLC0415

    seconds = _duration("--min-ttl", min_ttl)
    give_up = _duration("--timeout", timeout)
    backoff_cap = _duration("--max-backoff", max_backoff)
    labels = _labels(label)
    if write is None and (once or listen is None):
        typer.echo("--write FILE is required (with --once, or without --listen)", err=True)
        raise typer.Exit(2)
    if once and listen is not None:
        typer.echo("--once writes the file and exits; it does not --listen", err=True)
        raise typer.Exit(2)
    if write is not None and not write.parent.is_dir():
        typer.echo(f"--write: directory {write.parent} does not exist", err=True)
        raise typer.Exit(2)
    address = None
    if listen is not None:
        try:
            address = runner.parse_listen(listen)
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
    if log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        typer.echo("--log-level: DEBUG, INFO, WARNING, ERROR or CRITICAL", err=True)
        raise typer.Exit(2)
    configure_logging(log_level)
    try:
        status = asyncio.run(
            runner.main(
                url=url,
                profile=profile,
                scopes=scope,
                min_ttl=seconds,
                labels=labels,
                path=write,
                listen=address,
                once=once,
                once_budget=float(give_up),
                max_backoff=float(max(backoff_cap, 1)),
            )
        )
    except runner.ListenError as exc:
        typer.echo(f"token-broker sidecar: {exc}", err=True)
        raise typer.Exit(1) from None
    if status != 0:
        typer.echo(f"token-broker sidecar: no token with {seconds} s to live was written", err=True)
    raise typer.Exit(status)


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
    app()
