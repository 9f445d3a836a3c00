"""The embedded SQLite store: WAL, one writer thread with group commit, one reader thread.

Group commit: the writer takes every job waiting in its queue (up to ``MAX_BATCH``),
runs each inside its own SAVEPOINT within one transaction, and commits once. With
``synchronous=FULL`` that single COMMIT is the flush that makes the whole batch
durable; only then is any job's caller answered. A job that raises is rolled back to
its savepoint alone; a COMMIT that fails fails every job of the batch with
``StorageUnavailable``, and none of them persists.

Costs that would otherwise be paid per request are paid per batch or once: the
answers of a batch go back to the event loop in one wake-up (not one per job), each
named query's column names are read once, and the writer keeps a few rows that
change only by admin action (``pool_by_id``: a pool's lifetime) in memory, dropped
whenever a statement writes their table, and filled only from committed state.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from broker.errors import StorageUnavailable
from broker.store.base import Row, StoreStats, Tx

log = logging.getLogger("tenure.store")
T = TypeVar("T")
MAX_BATCH = 512
_NAME = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)
# Reads the writer answers from memory, and the table whose writes make them stale.
CACHED_READS = {"pool_by_id": "pools"}


def load_queries() -> dict[str, str]:
    """Named SQL statements from ``queries/*.sql`` (``-- name: x`` starts each)."""
    found: dict[str, str] = {}
    folder = resources.files("broker.store") / "queries"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _NAME.split(entry.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise RuntimeError(f"query {name!r} defined twice")
            found[name] = body.strip().rstrip(";")
    return found


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration, in order."""
    folder = resources.files("broker.store") / "migrations"
    out = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_.*\.sql$", entry.name)
        if match:
            out.append((int(match.group(1)), entry.name, entry.read_text()))
    out.sort()
    return out


def migrate(conn: sqlite3.Connection, upto: int | None = None) -> int:
    """Bring the schema up to date in place (never recreating it); returns the version."""
    current = conn.execute("PRAGMA user_version").fetchone()["user_version"]
    for version, name, sql in migrations():
        if version <= current or (upto is not None and version > upto):
            continue
        log.info("applying schema migration %s", name)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = version
    return int(current)


def _statements(sql: str) -> list[str]:
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def connect(path: Path, synchronous: str = "full") -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=2.0,
        cached_statements=512,
    )
    conn.row_factory = _dict_row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 2000")
    return conn


def _writes_to(sql: str) -> str | None:
    match = re.match(r"\s*(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM|REPLACE\s+INTO)\s+(\w+)", sql, re.I)
    return match.group(1).lower() if match else None


class RowCache:
    """Rows of ``CACHED_READS`` kept by the writer between transactions.

    Coherent because every write to the database goes through the writer: a statement
    that writes a cached table empties the cache and stops it filling until the batch
    has ended (so nothing uncommitted, or rolled back, is ever kept).
    """

    def __init__(self, queries: Mapping[str, str]) -> None:
        self.rows: dict[tuple[str, tuple[Any, ...]], Row] = {}
        tables = set(CACHED_READS.values())
        self.invalidating = {name for name, sql in queries.items() if _writes_to(sql) in tables}
        self.filling = True

    def end_batch(self, dirty: bool) -> None:
        if dirty or not self.filling:
            self.rows.clear()
        self.filling = True


class SqliteTx:
    def __init__(self, conn: sqlite3.Connection, queries: Mapping[str, str],
                 cache: RowCache | None = None) -> None:
        self._conn = conn
        self._q = queries
        self._cache = cache
        self._names: dict[str, list[str]] = {}

    def _columns(self, query: str, cursor: sqlite3.Cursor) -> list[str]:
        names = self._names.get(query)
        if names is None:
            names = self._names[query] = [d[0] for d in cursor.description]
        return names

    def one(self, query: str, **params: Any) -> Row | None:
        cache = self._cache
        if cache is not None and query in CACHED_READS:
            key = (query, tuple(sorted(params.items())))
            hit = cache.rows.get(key)
            if hit is not None:
                return dict(hit)
        cursor = self._conn.execute(self._q[query], params)
        raw = cursor.fetchone()
        if raw is None:
            return None
        row = dict(zip(self._columns(query, cursor), raw, strict=True))
        if cache is not None and query in CACHED_READS and cache.filling:
            cache.rows[key] = dict(row)
        return row

    def all(self, query: str, **params: Any) -> list[Row]:
        cursor = self._conn.execute(self._q[query], params)
        raws = cursor.fetchall()
        if not raws:
            return []
        names = self._columns(query, cursor)
        return [dict(zip(names, raw, strict=True)) for raw in raws]

    def scalar(self, query: str, **params: Any) -> Any:
        raw = self._conn.execute(self._q[query], params).fetchone()
        return None if raw is None else raw[0]

    def run(self, query: str, **params: Any) -> int:
        self._invalidate(query)
        return self._conn.execute(self._q[query], params).rowcount

    def run_many(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self._invalidate(query)
        self._conn.executemany(self._q[query], rows)

    def _invalidate(self, query: str) -> None:
        cache = self._cache
        if cache is not None and query in cache.invalidating:
            cache.rows.clear()
            cache.filling = False


@dataclass
class _Job:
    fn: Callable[[Tx], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP = object()


class SqliteStore:
    """``Store`` on one SQLite file. Create with ``await SqliteStore.open(path)``."""

    def __init__(self, path: Path, synchronous: str = "full") -> None:
        self.path = path
        self.synchronous = synchronous
        self.stats = StoreStats()
        self._queries = load_queries()
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._cache = RowCache(self._queries)

    @classmethod
    async def open(cls, path: Path, synchronous: str = "full") -> SqliteStore:
        store = cls(path, synchronous)
        await asyncio.to_thread(store._prepare)
        store._threads = [
            threading.Thread(target=store._writer, name="tenure-db-writer", daemon=True),
            threading.Thread(target=store._reader, name="tenure-db-reader", daemon=True),
        ]
        for thread in store._threads:
            thread.start()
        return store

    def _prepare(self) -> None:
        try:
            conn = connect(self.path, self.synchronous)
            try:
                migrate(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open the database {self.path}: {exc}") from exc

    async def write(self, fn: Callable[[Tx], T]) -> T:
        return await self._submit(self._writes, fn)

    async def read(self, fn: Callable[[Tx], T]) -> T:
        return await self._submit(self._reads, fn)

    async def _submit(self, q: queue.SimpleQueue[Any], fn: Callable[[Tx], T]) -> T:
        if self._closed:
            raise StorageUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        q.put(_Job(fn, loop, future))
        return await future

    async def ping(self) -> None:
        await self.read(lambda tx: tx.scalar("ping"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writes.put(_STOP)
        self._reads.put(_STOP)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)

    # -- threads -------------------------------------------------------------

    def _open_conn(self) -> sqlite3.Connection | None:
        try:
            conn = connect(self.path, self.synchronous)
        except sqlite3.Error:
            log.exception("cannot open the database")
            return None
        conn.row_factory = None  # SqliteTx builds the dicts, with column names read once
        return conn

    def _reader(self) -> None:
        conn = self._open_conn()
        tx = SqliteTx(conn, self._queries) if conn is not None else None
        while True:
            job = self._reads.get()
            if job is _STOP:
                break
            if conn is None:
                conn = self._open_conn()
                tx = SqliteTx(conn, self._queries) if conn is not None else None
            if conn is None:
                _deliver([(job, False, StorageUnavailable("the database cannot be opened"))])
                continue
            self.stats.read_jobs += 1
            try:
                conn.execute("BEGIN")
                try:
                    result = job.fn(tx)
                finally:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("read failed: %s", exc)
                _deliver([(job, False, StorageUnavailable("the database cannot be read now"))])
            except BaseException as exc:
                _deliver([(job, False, exc)])
            else:
                _deliver([(job, True, result)])
        if conn is not None:
            conn.close()

    def _writer(self) -> None:
        conn = self._open_conn()
        tx = None if conn is None else SqliteTx(conn, self._queries, self._cache)
        stopping = False
        while not stopping:
            first = self._writes.get()
            if first is _STOP:
                break
            batch: list[_Job] = [first]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._writes.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            if conn is None:
                conn = self._open_conn()
                tx = None if conn is None else SqliteTx(conn, self._queries, self._cache)
            if conn is None or tx is None:
                failure = StorageUnavailable("the database cannot be opened")
                _deliver([(job, False, failure) for job in batch])
                continue
            if not self._run_batch(conn, tx, batch):
                # The database failed this batch. Start the next one on a fresh connection:
                # one opened while the file was unwritable is read-only for good, and one
                # whose rollback failed may still be inside the dead transaction.
                _close_quietly(conn)
                conn = tx = None
        if conn is not None:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, tx: SqliteTx, batch: list[_Job]) -> bool:
        """Run and answer the batch; False when the database itself failed it."""
        outcomes: list[tuple[_Job, bool, Any]] = []
        cache = self._cache
        self.stats.write_jobs += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(tx)
                except sqlite3.IntegrityError as exc:
                    # A constraint guarding an invariant tripped: refuse this job alone.
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, False, exc))
                except sqlite3.Error:
                    raise  # the database itself failed: the whole batch fails below
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((job, True, result))
            conn.execute("COMMIT")
            self.stats.commits += 1
            cache.end_batch(dirty=False)
        except sqlite3.Error as exc:
            cache.end_batch(dirty=True)
            self.stats.failed_commits += 1
            log.error("write transaction failed, %d request(s) refused: %s", len(batch), exc)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("rollback failed; reopening the database connection")
            failure = StorageUnavailable("the database cannot be written now; nothing was changed")
            _deliver([(job, False, failure) for job in batch])
            return False
        _deliver(outcomes)
        return True


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error as exc:
        log.warning("closing the failed database connection: %s", exc)


def _deliver(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    """Hand results to their event loops: one thread-safe wake-up per loop, not per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, items)
        except RuntimeError:
            log.debug("event loop closed; %d answer(s) dropped", len(items))


def _settle_all(items: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in items:
        if job.future.done():  # the caller went away (cancelled)
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
