"""Every query name the domain passes to a ``Tx`` exists in each store's query files, and
every query filed there is used: a second store's query set is checked the same way
(add its folder to ``QUERY_SETS``). Names are found with ``ast``: string literals given
to ``tx.one/all/scalar/run/run_many``, and to ``paging.fetch`` (which passes its own on).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from broker.store.base import read_queries

ROOT = Path(__file__).resolve().parents[2]
BROKER = ROOT / "broker"
QUERY_SETS = sorted(p for p in (BROKER / "store").glob("queries*") if p.is_dir())
TX_METHODS = {"one", "all", "scalar", "run", "run_many"}
# Functions that take a query name and hand it to a Tx: (function name, argument index).
FORWARDERS = {"fetch": 1}


def _called(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def used_names() -> dict[str, set[str]]:
    """Query name → the broker modules that use it; fails on a name that is not a literal."""
    used: dict[str, set[str]] = {}
    dynamic = []
    for path in sorted(BROKER.rglob("*.py")):
        module = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = _called(node)
            on_tx = isinstance(node.func, ast.Attribute) and ast.unparse(node.func.value) == "tx"
            if on_tx and name in TX_METHODS:
                index = 0
            elif name in FORWARDERS and (isinstance(node.func, ast.Attribute) or module != "broker.paging"):
                index = FORWARDERS[name]
            else:
                continue
            if len(node.args) <= index:
                continue
            arg = node.args[index]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                used.setdefault(arg.value, set()).add(module)
            elif not (module == "broker.paging" and name in TX_METHODS):
                dynamic.append(f"{module}:{node.lineno}")
    assert not dynamic, f"query names that are not string literals: {dynamic}"
    return used


def test_the_names_are_found() -> None:
    used = used_names()
    assert {"health_probe", "lease_insert", "pools_page", "events_page_desc"} <= set(used)
    assert used["pools_page"] == {"broker.pools"}  # through paging.fetch


@pytest.mark.parametrize("folder", QUERY_SETS, ids=lambda p: p.name)
def test_every_query_used_exists_and_every_query_filed_is_used(folder: Path) -> None:
    filed = set(read_queries(folder))
    used = set(used_names())
    assert sorted(used - filed) == [], f"used by the domain but missing from {folder.name}"
    assert sorted(filed - used) == [], f"filed in {folder.name} but used nowhere"
