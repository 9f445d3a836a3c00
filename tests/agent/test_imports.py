"""The agent's modules import one another without a circle, ``TYPE_CHECKING`` included.

A circle means two modules that cannot be read, tested or changed apart; the keeper in
particular knows nothing of who owns it (its owner hands it a ``KeeperDeps``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agent"


def imports_of(path: Path) -> set[str]:
    """Every ``agent.*`` module that ``path`` imports, at any depth of its syntax tree
    (functions, ``if TYPE_CHECKING:`` blocks), but not in strings."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from agent import clock`` imports the module agent.clock.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "agent" or name.startswith("agent.")}


def graph() -> dict[str, set[str]]:
    modules = {"agent" if p.name == "__init__.py" else f"agent.{p.stem}": p for p in PACKAGE.glob("*.py")}
    return {name: imports_of(path) & modules.keys() - {name} for name, path in modules.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules round it, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(edges[node]):
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(edges):
        found = visit(start, [])
        if found:
            return found
    return None


def test_the_graph_is_read() -> None:
    edges = graph()
    assert "agent.keeper" in edges["agent.runner"]
    assert "agent.encoder_client" in edges["agent.commands"]  # one import is under TYPE_CHECKING


def test_no_module_of_the_agent_imports_in_a_circle() -> None:
    assert cycle(graph()) is None


def test_cycle_finds_a_circle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_keeper_knows_nothing_of_its_owners() -> None:
    owners = {"agent.runner", "agent.host", "agent.daemon", "agent.localapi", "agent.cli", "agent.commands"}
    assert not graph()["agent.keeper"] & owners


def test_an_idle_agent_does_not_load_what_only_the_broker_uses() -> None:
    # PEM handling (cryptography's serialization, ~1 MB resident) is the broker's, and so
    # are aiohttp's server classes (~1 MB; the local API has its own, agent/http1.py), and
    # argparse and the other commands are the other commands' (`run` reads its options
    # itself, agent/cli.py; the rest is agent/commands.py); a temporary file's name needs
    # no secrets and hmac (os.urandom): the agent's `run` must not pay for them
    # (docs/agent.md, "Footprint").
    code = (
        "import sys, agent.cli, agent.daemon\n"
        "print(sorted(m for m in sys.modules if m.startswith("
        "('cryptography.hazmat.primitives.serialization', 'aiohttp.web', 'html', 'argparse',"
        " 'secrets', 'hmac', 'agent.commands', 'agent.encoder_client', 'agent.enroll',"
        " 'shared.words'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
