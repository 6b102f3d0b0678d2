"""scripts/check-node.sh (run by `make system-deps`): too old a Node.js stops with the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-node.sh"
HINT = "install Node 20 or 22 from nodejs.org or NodeSource (apt), then re-run make test"


def fake_node(directory: Path, version: str) -> dict[str, str]:
    """An environment whose PATH finds, first, a `node` that prints ``version``."""
    node = directory / "node"
    node.write_text(f"#!/bin/sh\necho {version}\n")
    node.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the check script the way the Makefile does."""
    return subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10, check=False
    )


def test_debian_12_node_18_fails_with_what_to_do(tmp_path: Path) -> None:
    """Node 18 (Debian 12's nodejs): exit 1, naming the found and the needed version and the fix."""
    result = check(fake_node(tmp_path, "v18.19.0"))
    assert result.returncode == 1
    assert "Node.js 18.x found" in result.stderr
    assert ">= 20.19" in result.stderr
    assert HINT in result.stderr


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("v20.18.3", False),
        ("v20.19.0", True),
        ("v20.20.2", True),
        ("v22.12.0", True),
        ("v24.0.0", True),
        ("v9.99.0", False),
    ],
)
def test_version_boundary_is_20_19(tmp_path: Path, version: str, ok: bool) -> None:
    """Accepted from 20.19 on (numerically, so 9.x is not above 20.x); older is refused."""
    assert (check(fake_node(tmp_path, version)).returncode == 0) is ok


def test_missing_node_fails_with_the_hint(tmp_path: Path) -> None:
    """No `node` on PATH at all: exit 1 with the same hint."""
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run(
        ["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 1
    assert HINT in result.stderr


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="make system-deps would apt-get")
def test_make_system_deps_runs_the_check(tmp_path: Path) -> None:
    """`make system-deps` with Node 18 on PATH fails with the hint instead of succeeding."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "system-deps"],
        env=fake_node(tmp_path, "v18.19.0"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert HINT in result.stderr
