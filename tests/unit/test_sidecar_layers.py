"""The sidecar's layering, read from its sources: no import cycle, small modules, and
the pure parts (the shard map, the routing decision) free of connections.

Every import counts, wherever it is written: at the top, inside a function (a lazy
import) or under ``TYPE_CHECKING``. A cycle that only the type checker sees is
still two modules that cannot be understood, or compiled, one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"
MAX_LINES = 400


def module_imports(path: Path, modules: set[str]) -> set[str]:
    """The ``sidecar`` modules that ``path`` imports anywhere in its text."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sidecar":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .x import y
                parts = (node.module or "").split(".")
                names = [parts[0]] if parts[0] else [a.name for a in node.names]
            elif node.module is not None and node.module.split(".")[0] == "sidecar":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            else:
                continue
            found.update(n for n in names if n in modules)
    found.discard(path.stem)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(SIDECAR.glob("*.py"))
    modules = {p.stem for p in paths}
    return {p.stem: module_imports(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_sees_every_kind_of_import() -> None:
    """The checks below mean something only if lazy and type-only imports are edges."""
    graph = import_graph()
    assert "routing" in graph["exchange"]  # a top-level import
    assert "h2front" in graph["app"]  # inside a function
    assert "h2bridge" in graph["h2front"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_sidecar() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in sidecar/: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("pure", ["shardmap", "routing", "slot_state", "keys", "shardfn"])
def test_pure_layers_hold_no_connections(pure: str) -> None:
    """The shard map and the routing decision reach no pool, socket or front end."""
    io = {"upstream", "exchange", "h1base", "h1relay", "h1requests", "proxy", "app"}
    io |= {m for m in import_graph() if m.startswith("h2")}
    assert not reachable(import_graph(), pure) & io


def test_modules_are_small() -> None:
    sizes = {p.stem: len(p.read_text(encoding="utf-8").splitlines())
             for p in SIDECAR.glob("*.py")}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"sidecar modules over {MAX_LINES} lines: {over}"
