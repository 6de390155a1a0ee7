"""The package's import graph: no cycle among zoo/ and demo/ modules, counting EVERY import statement, also the ones
inside functions (a function-level import hides a cycle from Python, not from a reader: issue 20)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGES = ("zoo", "demo")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the packages (a package is its __init__.py)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The package modules one import statement names (``from . import x`` and ``from .a import b`` resolved against
    ``module``; ``from zoo import leaderboard`` names the submodule too)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    return {n for n in names if n in modules and n != module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (ast.walk: module level and inside functions)."""
    modules = _modules()
    return {m: set().union(*[_imported(m, f, n, modules) for n in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
                             if isinstance(n, (ast.Import, ast.ImportFrom))]) for m, f in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as its path (``a -> b -> a``), or None; depth-first, deterministic order."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_in_the_package():
    """Every import statement between zoo/ and demo/ modules, also inside functions, forms no cycle."""
    graph = import_graph()
    assert "zoo.members" in graph and "zoo.ensemble" in graph and "demo.app" in graph
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import cycle (counting imports inside functions): " + " -> ".join(cycle))


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The graph counts a function-level import and resolves ``from .x import y``; the cycle is named."""
    tree = ast.parse("def f():\n    from zoo.model import BoneClassifier\n")
    modules = {"zoo.members": tmp_path / "members.py", "zoo.model": tmp_path / "model.py"}
    (node,) = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert _imported("zoo.members", modules["zoo.members"], node, modules) == {"zoo.model"}
    (rel,) = [n for n in ast.walk(ast.parse("from .members import read_verified\n")) if isinstance(n, ast.ImportFrom)]
    assert _imported("zoo.model", modules["zoo.model"], rel, modules) == {"zoo.members"}
    assert find_cycle({"zoo.members": {"zoo.model"}, "zoo.model": {"zoo.members"}}) == [
        "zoo.members", "zoo.model", "zoo.members"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("low, high", [("zoo.members", "zoo.model"), ("zoo.members", "zoo.hub"),
                                       ("zoo.leaderboard", "zoo.ensemble"), ("zoo.hub", "zoo.leaderboard")])
def test_the_member_and_run_layers_import_upwards_only(low, high):
    """zoo.members (a member on disk) imports neither the network nor the Hub push; the leaderboard is data and
    imports no ensemble; a push imports no leaderboard (it uploads the one the run wrote)."""
    assert high not in import_graph()[low]
