"""The embedded SQLite store: WAL, one writer thread with group commit, one reader thread.

Group commit: the writer takes every job waiting in its queue (up to ``MAX_BATCH``),
runs each inside its own SAVEPOINT within one transaction, and commits once. With
``synchronous=FULL`` that single COMMIT is the flush that makes the whole batch
durable; only then is any job's caller answered. A job that raises is rolled back to
its savepoint alone; a COMMIT that fails fails every job of the batch with
``StorageUnavailable``, and none of them persists.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
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


class SqliteTx:
    def __init__(self, conn: sqlite3.Connection, queries: Mapping[str, str]) -> None:
        self._conn = conn
        self._q = queries

    def one(self, query: str, **params: Any) -> Row | None:
        row: Row | None = self._conn.execute(self._q[query], params).fetchone()
        return row

    def all(self, query: str, **params: Any) -> list[Row]:
        return self._conn.execute(self._q[query], params).fetchall()

    def scalar(self, query: str, **params: Any) -> Any:
        row = self._conn.execute(self._q[query], params).fetchone()
        return None if row is None else next(iter(row.values()))

    def run(self, query: str, **params: Any) -> int:
        return self._conn.execute(self._q[query], params).rowcount

    def run_many(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self._conn.executemany(self._q[query], rows)


@dataclass
class _Job:
    fn: Callable[[Tx], Any]
    future: Future[Any]


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
        future: Future[T] = Future()
        q.put(_Job(fn, future))
        return await asyncio.wrap_future(future)

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
            return connect(self.path, self.synchronous)
        except sqlite3.Error:
            log.exception("cannot open the database")
            return None

    def _reader(self) -> None:
        conn = self._open_conn()
        while True:
            job = self._reads.get()
            if job is _STOP:
                break
            if conn is None:
                conn = self._open_conn()
            if conn is None:
                _settle(job.future, error=StorageUnavailable("the database cannot be opened"))
                continue
            self.stats.read_jobs += 1
            try:
                conn.execute("BEGIN")
                try:
                    result = job.fn(SqliteTx(conn, self._queries))
                finally:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("read failed: %s", exc)
                _settle(job.future, error=StorageUnavailable("the database cannot be read now"))
            except BaseException as exc:
                _settle(job.future, error=exc)
            else:
                _settle(job.future, result=result)
        if conn is not None:
            conn.close()

    def _writer(self) -> None:
        conn = self._open_conn()
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
            if conn is None:
                for job in batch:
                    _settle(job.future, error=StorageUnavailable("the database cannot be opened"))
                continue
            self._run_batch(conn, batch)
        if conn is not None:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        tx = SqliteTx(conn, self._queries)
        outcomes: list[tuple[bool, Any]] = []
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
                    outcomes.append((False, exc))
                except sqlite3.Error:
                    raise  # the database itself failed: the whole batch fails below
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((True, result))
            conn.execute("COMMIT")
            self.stats.commits += 1
        except sqlite3.Error as exc:
            self.stats.failed_commits += 1
            log.error("write transaction failed, %d request(s) refused: %s", len(batch), exc)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("rollback failed; reopening the database connection")
            failure = StorageUnavailable("the database cannot be written now; nothing was changed")
            for job in batch:
                _settle(job.future, error=failure)
            return
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                _settle(job.future, result=value)
            else:
                _settle(job.future, error=value)


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
