"""``make runner``: the runner alone, as a zero-dependency wheel and a single-file .pyz.

Both hold a copy of service/runner/ renamed ``token_broker_runner`` (its imports are all
relative, so the rename is the whole change). The wheel is written with zipfile rather than
a build backend: it is a handful of files, and the build then needs no network and gives the
same bytes every time. The .pyz has no package metadata, so the version is stamped into it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import sys
import tempfile
import tomllib
import zipapp
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "service" / "runner"
PACKAGE = "token_broker_runner"
DISTRIBUTION = "token-broker-runner"
PYZ_NAME = "token-broker-runner.pyz"
REQUIRES_PYTHON = ">=3.9"
# Zip entries carry this date, so two builds of the same source are the same bytes.
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
PYZ_MAIN = f"""import sys

from {PACKAGE}.cli import main

sys.exit(main())
"""


def project_version() -> str:
    """The server's version from pyproject.toml: runner and server are released together."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def package_files() -> dict[str, bytes]:
    """``token_broker_runner/<name>.py`` -> content, for every module of service/runner."""
    return {f"{PACKAGE}/{path.name}": path.read_bytes() for path in sorted(SOURCE.glob("*.py"))}


def _metadata(version: str) -> str:
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {DISTRIBUTION}\n"
        f"Version: {version}\n"
        "Summary: Gets short-lived tokens from a token broker: token, exec, sidecar "
        "(standard library only).\n"
        "License: Apache-2.0\n"
        f"Requires-Python: {REQUIRES_PYTHON}\n"
    )


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_zip(target: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, FIXED_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)


def build_wheel(dist: Path, version: str) -> Path:
    """``dist/token_broker_runner-<version>-py3-none-any.whl``."""
    info = f"{PACKAGE}-{version}.dist-info"
    files = package_files()
    files[f"{info}/METADATA"] = _metadata(version).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: scripts/build_runner.py\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/entry_points.txt"] = (
        f"[console_scripts]\n{DISTRIBUTION} = {PACKAGE}.cli:main\n".encode()
    )
    record = [_record_line(name, data) for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    target = dist / f"{PACKAGE}-{version}-py3-none-any.whl"
    _write_zip(target, files)
    return target


def build_pyz(dist: Path, version: str) -> Path:
    """``dist/token-broker-runner.pyz``: ``python3 token-broker-runner.pyz token ...``."""
    target = dist / PYZ_NAME
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for name, data in package_files().items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        # Read by token_broker_runner.cli.runner_version (pkgutil.get_data works in a zip).
        (staging / PACKAGE / "VERSION").write_text(version + "\n", encoding="utf-8")
        (staging / "__main__.py").write_text(PYZ_MAIN, encoding="utf-8")
        unpacked = staging / "app"
        unpacked.mkdir()
        shutil.move(str(staging / PACKAGE), unpacked / PACKAGE)
        shutil.move(str(staging / "__main__.py"), unpacked / "__main__.py")
        zipapp.create_archive(unpacked, target, interpreter="/usr/bin/env python3", compressed=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """Build both into ``--dist`` (default dist/) and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    dist: Path = args.dist
    dist.mkdir(parents=True, exist_ok=True)
    version = project_version()
    for built in (build_wheel(dist, version), build_pyz(dist, version)):
        sys.stdout.write(f"{built}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
