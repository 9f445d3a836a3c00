"""The seam between the domain and the database.

Domain code never speaks SQL. It writes a plain function of a ``Tx`` and hands it to
``Store.write`` (one transaction, all or nothing) or ``Store.read`` (a consistent
snapshot). Inside it, queries are called by name (``tx.one("pool_by_id", pool_id=...)``)
and the SQL behind each name lives with the store (``broker/store/queries/*.sql``),
where a PostgreSQL store would keep its own.

Where ``fn`` runs is the store's business, so ``fn`` must be synchronous, quick, and
touch nothing but ``tx`` and its arguments. ``SqliteStore`` runs a write's ``fn`` on the
event loop itself, batched with the other writes waiting into one transaction (only the
COMMIT goes to a thread), and a read's ``fn`` on its reader thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = dict[str, Any]
_NAME = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)


class Tx(Protocol):
    """One open transaction. Methods run named queries with named parameters."""

    def one(self, query: str, **params: Any) -> Row | None:
        """The first row, or None."""
        ...

    def all(self, query: str, **params: Any) -> list[Row]: ...

    def scalar(self, query: str, **params: Any) -> Any:
        """The first column of the first row, or None."""
        ...

    def run(self, query: str, **params: Any) -> int:
        """Execute; the number of rows changed."""
        ...

    def run_many(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def new_id(self, prefix: str) -> str:
        """The id of a new row, such as ``pool_4kq9…``, from the store's id source."""
        ...


@dataclass
class StoreStats:
    """Counters for the operator's metrics and the group-commit tests."""

    commits: int = 0
    write_jobs: int = 0
    read_jobs: int = 0
    failed_commits: int = 0
    largest_batch: int = 0
    checkpoints: int = 0


class Store(Protocol):
    stats: StoreStats

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a write transaction and return its result once it is durable.

        If ``fn`` raises, its changes are rolled back and the exception propagates.
        If the database cannot be written, raises ``StorageUnavailable`` and nothing
        of ``fn`` persists.
        """
        ...

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` against a consistent snapshot; it must not write."""
        ...

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the database answers."""
        ...

    async def close(self) -> None: ...


def read_queries(folder: Traversable) -> dict[str, str]:
    """Named SQL statements from every ``*.sql`` file of ``folder`` (``-- name: x`` starts
    each); a name defined twice, in one file or two, is refused."""
    found: dict[str, str] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _NAME.split(entry.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise RuntimeError(f"query {name!r} defined twice")
            found[name] = body.strip().rstrip(";")
    return found
