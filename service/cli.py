"""``token-broker``: serve, check-config, new-key, new-cache-key, token."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from service.callers.api_keys import key_hash, new_api_key
from service.errors import ConfigError

app = typer.Typer(
    name="token-broker",
    help="Hands short-lived OIDC tokens to ingestion runners; holds the client secrets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings(config: Path | None) -> object:
    from pydantic import ValidationError  # noqa: PLC0415

    from service.settings import Settings  # noqa: PLC0415

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
def check_config(config: ConfigOption = None) -> None:
    """Validate the settings and broker YAML; list every problem; exit 1 if any."""
    from service.runtime import load_checked  # noqa: PLC0415
    from service.settings import Settings  # noqa: PLC0415

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


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the HTTP API (uvicorn; TOKEN_BROKER_HOST/PORT/WORKERS)."""
    import os  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    from service.logs import configure_logging  # noqa: PLC0415
    from service.runtime import load_checked  # noqa: PLC0415
    from service.settings import Settings  # noqa: PLC0415

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
    )


@app.command("new-key")
def new_key(caller: Annotated[str, typer.Option(help="Caller name in the broker YAML.")]) -> None:
    """Print a new API key once, and the config line that admits it."""
    key = new_api_key()
    typer.echo(f"API key for caller '{caller}' (shown once; store it in your secret manager):")
    typer.echo(key)
    typer.echo("")
    typer.echo("Add to the broker YAML:")
    typer.echo(f"callers:\n  {caller}:\n    api_key_sha256: {key_hash(key)}")


@app.command("new-cache-key")
def new_cache_key() -> None:
    """Print a new cache encryption key for TOKEN_BROKER_CACHE_KEYS."""
    from service.cache.crypto import new_cache_key as make  # noqa: PLC0415

    typer.echo(make())


@app.command()
def token(
    profile: Annotated[str, typer.Option(help="Profile to get a token for.")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="Scope to request (repeatable).")
    ] = None,
    min_ttl: Annotated[
        str, typer.Option(help="The token must stay valid this long: 3600, 90m, 4h.")
    ] = "0",
    url: Annotated[str, typer.Option(envvar="TOKEN_BROKER_URL", help="Broker base URL.")] = (
        "http://127.0.0.1:8080"
    ),
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Describe the token on stderr.")
    ] = False,
) -> None:
    """Ask a running broker for a token and print it alone on stdout."""
    from service.client import ClientError, credential_from_env, fetch_token  # noqa: PLC0415
    from service.durations import parse_duration  # noqa: PLC0415

    try:
        seconds = parse_duration(min_ttl)
    except ValueError as exc:
        typer.echo(f"--min-ttl: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        fetched = fetch_token(
            url, credential_from_env(), profile=profile, scopes=scope, min_ttl=seconds
        )
    except ClientError as exc:
        typer.echo(f"token-broker: {exc}", err=True)
        raise typer.Exit(1) from None
    if verbose:
        typer.echo(
            f"profile={profile} source={fetched.source} expires_in={fetched.expires_in} "
            f"scope={fetched.scope!r}",
            err=True,
        )
    sys.stdout.write(fetched.access_token + "\n")


def main() -> None:
    """Console entry point."""
    app()
