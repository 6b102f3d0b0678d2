"""Build ``.interop/venv`` (the real OpenMetadata ``metadata`` CLI) unless it is up to date.

``python -m tests.interop.ensure_venv`` (``make interop`` runs it). The venv is rebuilt from
scratch only when the SHA-256 of ``requirements.txt`` + ``constraints.txt`` differs from the
stamp written inside the venv after the last successful install, so a failed or interrupted
install is retried and an unchanged pin costs nothing. A file lock keeps two concurrent runs
from installing over each other. pip's output goes to ``.interop/pip.log``; its tail is shown
only when the install fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"
CONSTRAINTS = HERE / "constraints.txt"
INTEROP_DIR = ROOT / ".interop"
VENV = INTEROP_DIR / "venv"
STAMP = VENV / ".requirements.sha256"
METADATA_CLI = VENV / "bin" / "metadata"
PIP_LOG = INTEROP_DIR / "pip.log"
PIP_TIMEOUT_SECONDS = 900


class VenvError(RuntimeError):
    """The interop venv could not be built."""


def requirements_digest() -> str:
    """SHA-256 over both pin files, each prefixed with its name (so moving a line counts)."""
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, CONSTRAINTS):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def pinned_version(package: str = "openmetadata-ingestion") -> str:
    """The ``==`` version ``requirements.txt`` pins for ``package``."""
    for line in REQUIREMENTS.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise VenvError(f"{REQUIREMENTS} pins no {package}==VERSION")


def is_current() -> bool:
    """The venv exists, has the ``metadata`` CLI, and was built from the current pin files."""
    try:
        stamp = STAMP.read_text().strip()
    except OSError:
        return False
    return stamp == requirements_digest() and METADATA_CLI.is_file()


def _run(args: list[str], log: Path) -> None:
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(args)}\n")
        sink.flush()
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=PIP_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise VenvError(f"timed out after {PIP_TIMEOUT_SECONDS} s: {args[2:]}") from None
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise VenvError(f"exit {result.returncode}: {' '.join(args[2:])}\n{tail}")


def _build() -> None:
    shutil.rmtree(VENV, ignore_errors=True)
    PIP_LOG.unlink(missing_ok=True)
    _run([sys.executable, "-m", "venv", str(VENV)], PIP_LOG)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "install", "--quiet", "--upgrade", "pip"], PIP_LOG)
    install = ["install", "--quiet", "-r", str(REQUIREMENTS), "-c", str(CONSTRAINTS)]
    _run([*pip, *install], PIP_LOG)
    if not METADATA_CLI.is_file():
        raise VenvError(f"the install did not provide {METADATA_CLI}")
    # Written last: only a complete install is ever considered current.
    STAMP.write_text(requirements_digest() + "\n")


def ensure_venv() -> Path:
    """Make ``.interop/venv`` current (building it when needed); return the ``metadata`` CLI."""
    if is_current():
        return METADATA_CLI
    INTEROP_DIR.mkdir(exist_ok=True)
    with (INTEROP_DIR / "venv.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_current():
                _build()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return METADATA_CLI


def main() -> int:
    """Entry point: say whether the venv was reused or rebuilt, and how long that took."""
    started = time.monotonic()
    was_current = is_current()
    try:
        cli = ensure_venv()
    except VenvError as exc:
        print(f"interop venv: build failed: {exc}", file=sys.stderr)
        return 1
    action = "reused" if was_current else "built"
    print(
        f"interop venv: {action} {VENV.relative_to(ROOT)} "
        f"(openmetadata-ingestion {pinned_version()}, requirements sha256 "
        f"{requirements_digest()[:12]}) in {time.monotonic() - started:.1f} s; CLI {cli}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
