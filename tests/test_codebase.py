"""Checks on the code as a whole: no import circle, no declared dependency left unused.

Both read the source with ``ast`` rather than importing it, so they see every import:
those under ``if TYPE_CHECKING:`` and those inside functions included.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Collection, Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker", "agent", "shared")


def _modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, tree: ast.AST, modules: Collection[str]) -> Iterator[str]:
    """Every module the module imports, by dotted name; ``from x import y`` is an import of
    ``x.y`` when that is a module, else of ``x``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in modules else base


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of the packages it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {
            dotted for dotted in _imported(name, path, tree, modules) if dotted in modules and dotted != name
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

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
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_round(graph, group) for group in groups]


def _path_round(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest circle from the group's first module back to itself, within the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no circle in {group}")


def test_the_graph_sees_every_kind_of_import() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from broker import leases\n"
        "def later() -> None:\n    import broker.audit\n"
        "from . import errors\n"
        "from broker.api import agent\n"
        "from broker.store.base import Tx\n"
    )
    modules = {
        "broker",
        "broker.pools",
        "broker.leases",
        "broker.audit",
        "broker.errors",
        "broker.api",
        "broker.api.agent",
        "broker.store.base",
    }
    seen = set(_imported("broker.pools", ROOT / "broker" / "pools.py", ast.parse(source), modules))
    assert seen == {"typing", "broker.leases", "broker.audit", "broker.errors", "broker.api.agent", "broker.store.base"}
    assert "broker.api.agent" in import_graph()["broker.app"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_circle_among_the_packages() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _normalised(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_every_declared_dependency_is_imported() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {_normalised(re.split(r"[^A-Za-z0-9._-]", d, maxsplit=1)[0]) for d in declared}
    provides: dict[str, set[str]] = {}
    for top, distributions in packages_distributions().items():
        for distribution in distributions:
            provides.setdefault(_normalised(distribution), set()).add(top)
    modules = _modules()
    imported = set()
    for name, path in modules.items():
        for dotted in _imported(name, path, ast.parse(path.read_text(), str(path)), modules):
            imported.add(dotted.partition(".")[0])
    unused = sorted(d for d in names if not provides.get(d, {d.replace("-", "_")}) & imported)
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"
