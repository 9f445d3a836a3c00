"""The seam between the domain and the database: the contract every store meets.

Domain code never speaks SQL. It writes a plain function of a ``Tx`` and hands it to
``Store.write`` (one transaction, all or nothing) or ``Store.read`` (a consistent
snapshot). Inside it, queries are called by name (``tx.one("pool_by_id", pool_id=...)``)
and the SQL behind each name lives with the store, filed by the domain module that uses
it (``broker/store/queries/pools.sql``, ``leases.sql``, ``audit.sql``…); a second store
keeps its own set under the same names (a test checks each set against the names the
domain uses). ``broker.store.open_store(config)`` opens the configured store.

Isolation the domain may assume
-------------------------------
Every write function runs as if it ran alone: serializable. Whatever it read is still
true when it commits, so a check followed by a write (a name not yet taken, seats still
free, a code still live) needs no lock of its own. Reads see one consistent snapshot of
committed data. ``SqliteStore`` gives this by having one writer at a time: its writes
run one after another inside ``BEGIN IMMEDIATE`` (SQLite's single write lock, held
across processes too), and each read runs in one snapshot transaction.

What a second store must provide
--------------------------------
- Serializability of write functions, by either of:
  * SERIALIZABLE transactions with the *whole function* re-run on a serialization
    failure or deadlock (a fresh ``Tx``, a bounded number of tries, then
    ``StorageUnavailable``); or
  * explicit row locking that makes every check-then-write above as safe as that
    (to be proved, query by query, in the store's own documentation).
- Hence the rules every write function keeps (so it may be run more than once and only
  its last run counts): it is synchronous and quick; it touches nothing but ``tx``, its
  arguments and its locals; it mutates no argument and no state outside ``tx`` (no
  cache, no counter, no log of its own); it draws new ids with ``tx.new_id`` and the
  clock it was given or reads inside; whatever randomness it draws (tokens, codes,
  nonces) reaches the caller only through its return value. Effects outside the
  database (forgetting a cached principal, signing a token) happen in the caller, after
  ``write`` returns.
- Constraints checked at once (not deferred), reported as ``ConstraintViolated`` from
  the ``Tx`` call whose statement broke them, never as the driver's own error, named by
  these stable names (the domain answers each with its own 409):

      pools_name          one live pool per (estate, name_key)        → 409 name_taken
      holdings_leased     0 <= leased <= allocated                    → 409 pool_exhausted
                                                                        (acquire) or
                                                                        licences_in_use (move)
      holdings_allocated  allocated >= 0                              → 409 licences_in_use
      leases_encoder      one active lease per (server, encoder)      → 409 lease_race

  Any other constraint is named ``<table>_<columns>_key`` (unique), ``<table>_<column>_not_null``,
  ``foreign_key``, or by its CHECK expression, and answers a plain 409 ``conflict``. After
  ``ConstraintViolated`` a write function does not use ``tx`` again (PostgreSQL aborts
  the transaction); it raises, as ``broker.errors.constraint_means`` does for it.
- ``StorageUnavailable`` when the database cannot be reached, read or written, with
  nothing of the refused write persisted.

Where ``fn`` runs is the store's business. ``SqliteStore`` runs a write's ``fn`` on the
event loop itself, batched with the other writes waiting into one transaction (only the
COMMIT goes to a thread), and a read's ``fn`` on its reader thread. ``PostgresStore``
runs each on a worker thread, one transaction per call, SERIALIZABLE with the whole
function re-run on a serialization failure (``broker/store/postgres.py``).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = dict[str, Any]
_NAME = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_.*\.sql$")


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


class SchemaTooNew(Exception):
    """The database's schema is newer than any this broker knows (a newer broker ran on it)."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"the database is at schema {found}; this broker knows up to {known}: upgrade the broker")
        self.found, self.known = found, known


class Histogram:
    """Observations counted into fixed buckets (upper bounds, inclusive), as Prometheus
    histograms are: ``counts[i]`` is how many fell in bucket ``i`` alone (the last is +Inf)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


# Seconds, for store latencies (a commit with synchronous=FULL is one flush: ~0.1–10 ms).
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Jobs per group commit (1 when idle, up to the store's batch limit under load).
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class StoreStats:
    """Counters for the operator's metrics and the group-commit tests. Both stores keep
    them: ``batch_jobs`` observes the jobs of every write transaction attempted,
    ``commit_seconds`` each successful one from BEGIN to durable COMMIT, and
    ``read_seconds`` each read from hand-off to answer."""

    commits: int = 0
    write_jobs: int = 0
    read_jobs: int = 0
    failed_commits: int = 0
    retries: int = 0  # PostgreSQL: tries run again (serialization failure, deadlock, lost connection)
    largest_batch: int = 0
    checkpoints: int = 0
    batch_jobs: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZES))
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS))
    read_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS))


class Store(Protocol):
    stats: StoreStats

    async def write(self, fn: Callable[[Tx], T], *, lane: str | None = None) -> T:
        """Run ``fn`` in a write transaction and return its result once it is durable.

        If ``fn`` raises, its changes are rolled back and the exception propagates.
        If the database cannot be written, raises ``StorageUnavailable`` and nothing
        of ``fn`` persists. ``lane`` names writes likely to change the same rows (an
        estate's lease traffic): a store with concurrent writers may run one lane's
        writes one at a time rather than retry their collisions. A hint for speed only;
        isolation never depends on it.
        """
        ...

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` against a consistent snapshot; it must not write."""
        ...

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the database can be written now.

        It may write (a one-row ``health`` table), at most about once a second, and may
        take a recent successful write as the proof instead.
        """
        ...

    async def close(self) -> None: ...


def read_migrations(folder: Traversable) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every ``NNNN_name.sql`` migration in ``folder``, in order."""
    out = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            out.append((int(match.group(1)), entry.name, entry.read_text()))
    out.sort()
    return out


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
