"""The runner's commands: ``token``, ``exec``, ``sidecar``, ``doctor`` (argparse, stdlib only).

``token-broker`` (the server's CLI) hands these commands to ``main`` unchanged, so the
flags, messages and exit statuses are the same whichever way the runner was installed.
Exit statuses: 0 done, 1 no token (the broker refused or could not be reached), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pkgutil
import re
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

from . import doctor
from . import sidecar as runner
from .client import (
    DEFAULT_URL,
    MAX_LABELS,
    ClientError,
    FetchedToken,
    credential_from_env,
    fetch_token,
    parse_label,
    run_labels,
    write_private_file,
)
from .durations import parse_duration

__all__ = ["COMMANDS", "main", "runner_version"]

COMMANDS = ("token", "exec", "sidecar", "doctor")
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Written into the .pyz by scripts/build_runner.py: a zipapp has no package metadata.
_STAMP = "VERSION"


class _Usage(Exception):
    """A usage error: exit status 2 with the message."""


def runner_version() -> str:
    """This runner's version: the .pyz stamp, else the installed distribution's metadata."""
    # The stamp first: a .pyz run by a Python that also has a wheel installed is the .pyz.
    try:
        stamp = pkgutil.get_data(__package__ or __name__, _STAMP)
    except OSError:
        stamp = None
    if stamp:
        return stamp.decode().strip()
    distribution = "token-broker" if __package__ == "service.runner" else "token-broker-runner"
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Get short-lived tokens from a token broker."
    )
    parser.add_argument("--version", action="version", version=f"{prog} {runner_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    url_default = os.environ.get("TOKEN_BROKER_URL") or DEFAULT_URL

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--profile", required=True, help="Profile to get a token for.")
        sub.add_argument(
            "--scope", action="append", default=None, help="Scope to request (repeatable)."
        )
        sub.add_argument(
            "--min-ttl",
            default="0",
            help="The token must stay valid this long: 3600, 90m, 4h.",
        )
        sub.add_argument(
            "--url", default=url_default, help="Broker base URL (env: TOKEN_BROKER_URL)."
        )
        sub.add_argument(
            "--label",
            action="append",
            default=None,
            help="key=value for the broker's audit line (repeatable); AIRFLOW_CTX_* are added.",
        )

    token = commands.add_parser(
        "token",
        help="Print a token (or write it to a file).",
        description="Ask a running broker for a token and print it alone on stdout (or write "
        "it to a file). Credential: TOKEN_BROKER_CREDENTIAL, else the file "
        "TOKEN_BROKER_CREDENTIAL_FILE, else the projected token at "
        "/var/run/secrets/token-broker/token when it exists.",
    )
    common(token)
    token.add_argument(
        "--output", "-o", type=Path, help="Write to FILE (atomically, mode 0600) instead of stdout."
    )
    token.add_argument(
        "--json", dest="as_json", action="store_true", help="The broker's JSON answer."
    )
    token.add_argument("--verbose", "-v", action="store_true", help="Describe it on stderr.")

    exec_ = commands.add_parser(
        "exec",
        help="Fetch a token into an environment variable, then become CMD.",
        description="Fetch a token into $OM_JWT_TOKEN (never argv), then become CMD. CMD "
        "replaces this process, so signals reach it and its exit status is the status. CMD "
        "does not see TOKEN_BROKER_CREDENTIAL. Without a token CMD is not run: status 1.",
    )
    common(exec_)
    exec_.add_argument(
        "--env", default="OM_JWT_TOKEN", help="Environment variable that receives the token."
    )
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARGS]...")

    sidecar = commands.add_parser(
        "sidecar",
        help="Keep a fresh token in a file and on a loopback port.",
        description="Keep a fresh token in a file and on a loopback port (or, with --once, "
        "fetch it once). Refreshes after two thirds of the token's usable life (its life "
        "beyond --min-ttl). Retries with jittered exponential backoff while the broker is "
        "down. Never hands out a token with less than --min-ttl left: 503, and the file is "
        "removed.",
    )
    common(sidecar)
    sidecar.add_argument(
        "--write", type=Path, help="Keep the token in FILE (atomic replace, mode 0600)."
    )
    sidecar.add_argument(
        "--listen",
        help="Serve GET /token, POST /oauth2/token, GET /healthz on this loopback HOST:PORT.",
    )
    sidecar.add_argument(
        "--once", action="store_true", help="Fetch, write FILE and exit (init containers)."
    )
    sidecar.add_argument("--timeout", default="60s", help="--once: give up after this long.")
    sidecar.add_argument("--max-backoff", default="60s", help="Longest wait between retries.")
    sidecar.add_argument(
        "--log-level",
        default=os.environ.get("TOKEN_BROKER_LOG_LEVEL") or "INFO",
        help="Log level (env: TOKEN_BROKER_LOG_LEVEL).",
    )

    doctor_ = commands.add_parser(
        "doctor",
        help="Check that OpenMetadata accepts the profile's tokens; say what to change if not.",
        description="Fetch a token as `token` does (never printed), check it against "
        "OpenMetadata's rules and the settings it publishes, ask OpenMetadata who the token is "
        "and what it may do, and print a checklist whose FAIL lines name the OpenMetadata or "
        "IdP setting to change. Exit 0 exactly when OpenMetadata accepts the token.",
    )
    doctor_.add_argument("target", choices=["openmetadata"], help="What to check against.")
    common(doctor_)
    doctor_.add_argument(
        "--server",
        required=True,
        help="OpenMetadata's API URL, the workflow's hostPort: https://om.example.com/api.",
    )
    doctor_.add_argument("--timeout", default="10s", help="Per request to OpenMetadata or IdP.")
    return parser


def _duration(option: str, value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _Usage(f"{option}: {exc}") from None


def _labels(options: Sequence[str] | None) -> dict[str, str]:
    explicit: dict[str, str] = {}
    for text in options or ():
        try:
            key, value = parse_label(text)
        except ValueError as exc:
            raise _Usage(f"--label: {exc}") from None
        explicit[key] = value
    if len(explicit) > MAX_LABELS:
        raise _Usage(f"--label: at most {MAX_LABELS} labels")
    return run_labels(explicit)


def _fetch(
    prog: str, args: argparse.Namespace, min_ttl: int, labels: dict[str, str]
) -> FetchedToken:
    try:
        return fetch_token(
            args.url,
            credential_from_env(),
            profile=args.profile,
            scopes=args.scope,
            min_ttl=min_ttl,
            labels=labels,
        )
    except ClientError as exc:
        _fail(f"{prog}: {exc}", 1)


def _fail(message: str, status: int) -> NoReturn:
    print(message, file=sys.stderr)  # noqa: T201
    raise SystemExit(status)


def _token(prog: str, args: argparse.Namespace) -> int:
    seconds = _duration("--min-ttl", args.min_ttl)
    labels = _labels(args.label)
    output: Path | None = args.output
    if output is not None and not output.parent.is_dir():
        raise _Usage(f"--output: directory {output.parent} does not exist")
    fetched = _fetch(prog, args, seconds, labels)
    text = json.dumps(dict(fetched.body)) if args.as_json else fetched.access_token
    if args.verbose:
        print(  # noqa: T201
            f"profile={args.profile} source={fetched.source} expires_in={fetched.expires_in} "
            f"scope={fetched.scope!r}",
            file=sys.stderr,
        )
    if output is None:
        sys.stdout.write(text + "\n")
        return 0
    try:
        # No trailing newline: readers that use the file content verbatim as a header work.
        write_private_file(output, text)
    except OSError as exc:
        _fail(f"--output: cannot write {output}: {exc.strerror}", 1)
    return 0


def _exec(prog: str, args: argparse.Namespace) -> int:
    command: list[str] = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise _Usage("exec: give the command to run after the options (CMD [ARGS]...)")
    if not re.fullmatch(_ENV_NAME, args.env):
        raise _Usage("--env: not an environment variable name")
    seconds = _duration("--min-ttl", args.min_ttl)
    fetched = _fetch(prog, args, seconds, _labels(args.label))
    child_env = dict(os.environ)
    # The command needs the token, not the credential that can mint more of them.
    child_env.pop("TOKEN_BROKER_CREDENTIAL", None)
    child_env[args.env] = fetched.access_token
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, child_env)  # noqa: S606
    except OSError as exc:
        # The shell's conventions: 127 not found, 126 found but not executable.
        status = 127 if isinstance(exc, FileNotFoundError) else 126
        _fail(f"{prog} exec: cannot run {command[0]}: {exc.strerror}", status)


def _doctor(prog: str, args: argparse.Namespace) -> int:
    seconds = _duration("--min-ttl", args.min_ttl)
    timeout = _duration("--timeout", args.timeout)
    labels = _labels(args.label)
    if not args.server.startswith(("http://", "https://")):
        raise _Usage("--server: the workflow's hostPort, e.g. https://om.example.com/api")
    options = doctor.Options(
        server=args.server, broker_url=args.url, min_ttl=seconds, timeout=float(max(timeout, 1))
    )

    def fetch() -> FetchedToken:
        return fetch_token(
            args.url,
            credential_from_env(),
            profile=args.profile,
            scopes=args.scope,
            min_ttl=seconds,
            labels=labels,
        )

    del prog
    return doctor.run(options, fetch, print)


def _sidecar(prog: str, args: argparse.Namespace) -> int:
    seconds = _duration("--min-ttl", args.min_ttl)
    give_up = _duration("--timeout", args.timeout)
    backoff_cap = _duration("--max-backoff", args.max_backoff)
    labels = _labels(args.label)
    write: Path | None = args.write
    if write is None and (args.once or args.listen is None):
        raise _Usage("--write FILE is required (with --once, or without --listen)")
    if args.once and args.listen is not None:
        raise _Usage("--once writes the file and exits; it does not --listen")
    if write is not None and not write.parent.is_dir():
        raise _Usage(f"--write: directory {write.parent} does not exist")
    address = None
    if args.listen is not None:
        try:
            address = runner.parse_listen(args.listen)
        except ValueError as exc:
            raise _Usage(str(exc)) from None
    if args.log_level.upper() not in _LOG_LEVELS:
        raise _Usage("--log-level: DEBUG, INFO, WARNING, ERROR or CRITICAL")
    configure_logging(args.log_level)
    try:
        status = asyncio.run(
            runner.main(
                url=args.url,
                profile=args.profile,
                scopes=args.scope,
                min_ttl=seconds,
                labels=labels,
                path=write,
                listen=address,
                once=args.once,
                once_budget=float(give_up),
                max_backoff=float(max(backoff_cap, 1)),
            )
        )
    except runner.ListenError as exc:
        _fail(f"{prog} sidecar: {exc}", 1)
    if status != 0:
        print(  # noqa: T201
            f"{prog} sidecar: no token with {seconds} s to live was written", file=sys.stderr
        )
    return status


class _JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extras."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in self._STANDARD)
        return json.dumps(line, default=str)


def configure_logging(level: str) -> None:
    """Log to stderr: JSON lines for collectors, readable text on a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_JsonLines())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def main(argv: Sequence[str] | None = None, prog: str = "token-broker-runner") -> int:
    """Run one command; the exit status (``exec`` does not return when it runs CMD)."""
    parser = _parser(prog)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    handlers = {"token": _token, "exec": _exec, "sidecar": _sidecar, "doctor": _doctor}
    try:
        return handlers[args.command](prog, args)
    except _Usage as exc:
        parser.exit(2, f"{prog} {args.command}: {exc}\n")
