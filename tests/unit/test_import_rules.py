"""The import rules of service/ (docs DESIGN.md "Layout"), read from the source with ast.

Three kinds of import are told apart: ``module`` (runs when the module is imported: top
level, class bodies, ``if``/``try`` blocks), ``typing`` (under ``if TYPE_CHECKING:``) and
``lazy`` (inside a function). Cycles are looked for among ``module`` imports, which decide
whether the package imports at all, and separately among ``module`` plus ``typing`` imports,
so that a type-level cycle (config <-> upstream, issue 13) cannot come back unnoticed. The
rules on what a room may import apply to every kind, lazy ones included.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
Kind = Literal["module", "typing", "lazy"]
SERVER_ONLY = frozenset({"fastapi", "starlette", "redis", "httpx", "httpx2", "authlib", "uvicorn"})


@dataclass(frozen=True)
class Import:
    """One imported name as written, resolved to the module it loads."""

    target: str  # a dotted module name: "service.config.schema", "httpx2", "json"
    kind: Kind
    relative: bool
    line: int

    @property
    def top(self) -> str:
        """The top-level package, which decides standard library or not."""
        return self.target.partition(".")[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> Mapping[str, Path]:
    return {_module_name(path): path for path in sorted(SERVICE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(nodes: list[ast.stmt], kind: Kind) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk(node.body, "lazy")
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _walk(node.body, "typing" if kind == "module" else kind)
            yield from _walk(node.orelse, kind)
        else:
            # Blocks run where they stand; except handlers and match cases hold theirs one
            # level down.
            stmts: list[ast.stmt] = []
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    stmts.append(child)
                elif isinstance(child, ast.ExceptHandler | ast.match_case):
                    stmts += child.body
            yield from _walk(stmts, kind)


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    """Every import in ``module``, relative ones resolved against its package."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node, kind in _walk(ast.parse(path.read_text(encoding="utf-8")).body, "module"):
        if isinstance(node, ast.Import):
            found += [Import(a.name, kind, relative=False, line=node.lineno) for a in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            # ``from package import module`` loads that module; otherwise the name is an
            # attribute of ``base``.
            sub = f"{base}.{alias.name}"
            target = sub if sub in _modules() else base
            found.append(Import(target, kind, relative=bool(node.level), line=node.lineno))
    return tuple(found)


def _graph(kinds: frozenset[Kind]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in _modules()}
    for module in _modules():
        for imp in imports_of(module):
            if imp.kind not in kinds or imp.top != "service":
                continue
            # Importing a.b.c runs a and a.b first, except the importer's own packages,
            # which are already running by then.
            parts = imp.target.split(".")
            for depth in range(1, len(parts) + 1):
                target = ".".join(parts[:depth])
                if target in _modules() and not _in(module, target):
                    graph[module].add(target)
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def _where(module: str, imp: Import) -> str:
    return f"{_modules()[module].relative_to(ROOT)}:{imp.line} imports {imp.target} ({imp.kind})"


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def test_the_rules_see_the_whole_package() -> None:
    """The walker finds the modules and their imports, so an empty result means something."""
    assert "service.runtime" in _modules()
    assert "service.config.load" in _modules()
    assert any(i.target == "service.config.schema" for i in imports_of("service.config.load"))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle() -> None:
    """No cycle among the imports that run when a module is imported."""
    cycle = find_cycle(_graph(frozenset({"module"})))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_even_for_type_checking() -> None:
    """No cycle either when the imports under ``if TYPE_CHECKING:`` are counted."""
    cycle = find_cycle(_graph(frozenset({"module", "typing"})))
    assert cycle is None, "type-level import cycle: " + " -> ".join(cycle or [])


def test_core_imports_no_web_framework_cache_or_http_client() -> None:
    """``core/`` is the use case alone: no FastAPI, Redis or HTTP client, however imported."""
    found = [
        _where(module, imp)
        for module in _modules()
        if _in(module, "service.core")
        for imp in imports_of(module)
        if imp.top in SERVER_ONLY
    ]
    assert not found, "\n".join(found)


def test_runner_imports_only_the_standard_library_and_itself_relatively() -> None:
    """``runner/`` can ship alone: standard library only, its own modules by relative import."""
    found = [
        _where(module, imp)
        for module in _modules()
        if _in(module, "service.runner")
        for imp in imports_of(module)
        if not imp.relative and imp.top not in sys.stdlib_module_names | {"__future__"}
    ]
    assert not found, "\n".join(found)


def test_nothing_imports_the_api_but_the_cli() -> None:
    """Only ``service.cli`` and ``api/`` itself import ``service.api``."""
    found = [
        _where(module, imp)
        for module in _modules()
        if module != "service.cli" and not _in(module, "service.api")
        for imp in imports_of(module)
        if _in(imp.target, "service.api")
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", ["service.models", "service.errors"])
def test_vocabulary_imports_only_each_other_and_the_shared_oauth2_rules(module: str) -> None:
    """``models`` and ``errors`` import nothing of ours but each other and ``runner.oauth2``."""
    allowed = {"service", "service.models", "service.errors", "service.runner"}
    allowed.add("service.runner.oauth2")
    found = [
        _where(module, imp)
        for imp in imports_of(module)
        if imp.top == "service" and imp.target not in allowed
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("package", ["config", "core", "store", "observe", "upstream", "callers"])
def test_package_faces_name_their_modules(package: str) -> None:
    """Each room's ``__all__`` names modules it holds (the face re-exports nothing)."""
    face = importlib.import_module(f"service.{package}")
    missing = [name for name in face.__all__ if f"service.{package}.{name}" not in _modules()]
    assert not missing, f"service.{package}.__all__ names no module: {missing}"
