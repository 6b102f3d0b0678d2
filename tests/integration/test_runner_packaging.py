"""The runner three ways against a real broker: with the server, from its wheel, as a .pyz.

``scripts/build_runner.py`` builds the wheel and the .pyz once per session. The wheel goes into
a bare venv (``pip install --no-index --no-deps``) and the .pyz runs under ``python -S`` (no
site-packages), each under Python 3.9 and the newest Python found, so "standard library
only, 3.9+" is tested where it matters: outside this venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import build_runner
from tests.support import OidcProvider, verify_access_token
from tests.support.broker_process import BrokerProcess, broker_env, module_broker

TIMEOUT = 60
ROOT = Path(__file__).resolve().parents[2]
PY39_CANDIDATES = ("/root/.pyenv/versions/3.9.18/bin/python3.9", "python3.9")


def _version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def _python39() -> str | None:
    for candidate in PY39_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _newest_python() -> str | None:
    """The highest python3.N on the pyenv versions or PATH (3.13 today)."""
    found: dict[tuple[int, int], str] = {}
    paths = list(Path("/root/.pyenv/versions").glob("*/bin/python3.*"))
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory:
            paths += Path(directory).glob("python3.*")
    for path in paths:
        match = re.fullmatch(r"python3\.(\d+)", path.name)
        if match and os.access(path, os.X_OK):
            found.setdefault((3, int(match.group(1))), str(path))
    return found[max(found)] if found else None


INTERPRETERS = {"3.9": _python39(), "newest": _newest_python()}


def _interpreter(name: str) -> str:
    path = INTERPRETERS[name]
    if path is None:
        pytest.skip(f"no Python {name} interpreter on /root/.pyenv/versions or PATH")
    return path


@pytest.fixture(scope="session")
def runner_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and the .pyz, built once per session."""
    dist = tmp_path_factory.mktemp("runner-dist")
    assert build_runner.main(["--dist", str(dist)]) == 0
    return dist


@pytest.fixture(scope="module")
def broker(
    oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """A broker subprocess for this module, on the session issuer."""
    with module_broker(oidc_provider, tmp_path_factory.mktemp("packaging-broker")) as proc:
        yield proc


_VENVS: dict[str, Path] = {}


def _wheel_venv(python: str, dist: Path, where: Path) -> Path:
    """A venv of ``python`` holding the runner wheel and nothing else; its bin directory."""
    if python not in _VENVS:
        target = where / f"venv-{len(_VENVS)}"
        subprocess.run(
            [python, "-m", "venv", str(target)], check=True, timeout=120, capture_output=True
        )
        wheels = sorted(dist.glob("token_broker_runner-*-py3-none-any.whl"))
        assert len(wheels) == 1, wheels
        subprocess.run(
            [
                *(str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"),
                *("--no-index", "--no-deps", "--disable-pip-version-check", str(wheels[0])),
            ],
            check=True,
            timeout=120,
            capture_output=True,
        )
        _VENVS[python] = target / "bin"
    return _VENVS[python]


WAYS = ["server", "wheel-3.9", "wheel-newest", "pyz-3.9", "pyz-newest"]


@pytest.fixture(params=WAYS)
def runner(
    request: pytest.FixtureRequest, runner_dist: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[str]]:
    """(program name, argv prefix) of the runner installed one way."""
    way: str = request.param
    if way == "server":
        return "token-broker", [sys.executable, "-m", "service"]
    kind, _, interpreter = way.partition("-")
    python = _interpreter(interpreter)
    if kind == "wheel":
        bin_dir = _wheel_venv(python, runner_dist, tmp_path_factory.getbasetemp())
        return "token-broker-runner", [str(bin_dir / "token-broker-runner")]
    return "token-broker-runner", [python, "-S", str(runner_dist / "token-broker-runner.pyz")]


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def env(broker: BrokerProcess, tmp_path: Path) -> dict[str, str]:
    """Pointing at the broker with the airflow caller's API key; no PYTHONPATH to lean on."""
    values = broker_env(
        TOKEN_BROKER_URL=broker.url,
        TOKEN_BROKER_CREDENTIAL=broker.files.keys["airflow"],
        HOME=str(tmp_path),
    )
    values.pop("PYTHONPATH", None)
    return values


def _assert_genuine(token: str, issuer: OidcProvider) -> None:
    header, claims = verify_access_token(token, issuer.jwks())
    assert header["alg"] == "RS256"
    assert claims["exp"] > time.time()


def test_token_prints_a_genuine_token(
    runner: tuple[str, list[str]], env: dict[str, str], tmp_path: Path, oidc_provider: OidcProvider
) -> None:
    """``token --profile`` prints the issuer's token alone on stdout, whichever way installed."""
    _, argv = runner
    result = _run([*argv, "token", "--profile", "ingestion", "--min-ttl", "5m"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    _assert_genuine(token, oidc_provider)
    assert env["TOKEN_BROKER_CREDENTIAL"] not in result.stdout + result.stderr


def test_exec_passes_the_token_in_the_environment(
    runner: tuple[str, list[str]], env: dict[str, str], tmp_path: Path, oidc_provider: OidcProvider
) -> None:
    """``exec -- CMD`` runs CMD with the token in $OM_JWT_TOKEN and without the credential."""
    _, argv = runner
    script = (
        'printf %s "$OM_JWT_TOKEN" > token.out; '
        'printf %s "${TOKEN_BROKER_CREDENTIAL-unset}" > credential.out'
    )
    result = _run(
        [*argv, "exec", "--profile", "ingestion", "--", "sh", "-c", script], env, tmp_path
    )
    assert result.returncode == 0, result.stderr
    _assert_genuine((tmp_path / "token.out").read_text(), oidc_provider)
    assert (tmp_path / "credential.out").read_text() == "unset"


def test_refusals_and_usage_errors_keep_their_exit_statuses(
    runner: tuple[str, list[str]], env: dict[str, str], tmp_path: Path
) -> None:
    """A bad --min-ttl is a usage error (2); a caller without a grant gets 1 and the reason."""
    _, argv = runner
    usage = _run([*argv, "token", "--profile", "ingestion", "--min-ttl", "soon"], env, tmp_path)
    assert usage.returncode == 2
    assert "--min-ttl" in usage.stderr
    assert "Traceback" not in usage.stderr
    env["TOKEN_BROKER_CREDENTIAL"] = "tbk_0badf00d_runner-NotARealKeyButShapedLikeOne"
    refused = _run([*argv, "token", "--profile", "ingestion"], env, tmp_path)
    assert refused.returncode == 1
    assert "401" in refused.stderr
    assert "NotARealKey" not in refused.stderr


def test_version_comes_from_package_metadata_or_the_stamp(
    runner: tuple[str, list[str]], env: dict[str, str], tmp_path: Path
) -> None:
    """``--version`` names the program and the project's version (metadata, or the .pyz stamp)."""
    prog, argv = runner
    result = _run([*argv, "--version"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{prog} {_version()}\n"


def test_the_wheel_needs_nothing_but_the_standard_library(
    runner_dist: Path, tmp_path: Path
) -> None:
    """The wheel declares no dependency, Python >= 3.9, and the console script."""
    import zipfile  # noqa: PLC0415

    (wheel,) = runner_dist.glob("token_broker_runner-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "Requires-Dist" not in metadata
    assert "Requires-Python: >=3.9" in metadata
    assert "Name: token-broker-runner" in metadata
    assert "token-broker-runner = token_broker_runner.cli:main" in entry_points
    assert not [n for n in names if n.startswith("service/")]
    assert wheel.name == f"token_broker_runner-{_version()}-py3-none-any.whl"
