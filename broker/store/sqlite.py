"""The embedded SQLite store: WAL, group commit on the event loop, one reader thread.

Group commit: a flusher task on the event loop takes every write job waiting (up to
``MAX_BATCH``), opens one ``BEGIN IMMEDIATE`` transaction, runs each job inside its own
SAVEPOINT right there on the loop (a job is a few dozen microseconds of SQLite work on
pages already in memory), and hands only the COMMIT to a dedicated committer thread.
With ``synchronous=FULL`` that COMMIT is the flush that makes the whole batch durable;
only then is any job's caller answered. Requests arriving meanwhile wait for the next
batch, so a batch costs one hand-off between threads, not one per request, and the loop
and a writer thread no longer take turns at the GIL for every statement (the writer
process of ``serve --workers``, whose loop has nothing else to do meanwhile, COMMITs a
small batch itself: ``WRITER_LOOP_COMMIT_JOBS``). A job that raises is rolled back to
its savepoint alone; a COMMIT that fails fails every job of the batch with
``StorageUnavailable``, and none of them persists.

Nothing on the loop waits on a lock: the write connection has ``busy_timeout=0``, and
when another process holds the database's write lock, BEGIN is retried after short
jittered sleeps for up to ``BUSY_WAIT`` seconds, then the batch fails with
``StorageUnavailable``. Reads run on the reader thread, one hand-off per read however
many queries it makes (``python -m bench.reader`` measures it against aiosqlite, which
costs a hand-off per statement). WAL checkpoints run from a task on the loop through
an aiosqlite connection, where one statement every half second is all there is; once
the WAL is long, one small checkpoint between two batches lets SQLite restart it, which
under steady load it otherwise never does.

A batch runs its jobs on the loop for at most ``BATCH_LOOP_SECONDS``; the jobs it did
not reach go back to the head of the queue for the next batch, so that answers and new
requests get the loop between batches however many jobs wait.

Costs that would otherwise be paid per request are paid per batch or once: the answers
of a batch reach the loop in one wake-up, and each named query's column names are read
once. Nothing is cached between transactions, so every read sees what is committed,
whichever process committed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import queue
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from broker.errors import ConstraintViolated, StorageUnavailable
from broker.ids import IdSource, new_id
from broker.store.base import Row, SchemaTooNew, StoreStats, Tx, read_migrations, read_queries

log = logging.getLogger("tenure.store")
T = TypeVar("T")
MAX_BATCH = 512
# How long one batch may run its jobs on the event loop before the rest of the waiting
# jobs are left for the next batch: a bound on how long a batch keeps the loop from
# sending answers and reading requests (each job is ~100-300 us of SQLite and Python).
BATCH_LOOP_SECONDS = 0.010
# The writer process of ``serve --workers`` (``broker.store.relay``) COMMITs a batch of at
# most this many jobs on its own loop when no other job waits, rather than in the
# committer thread. That loop has nothing else to do until the COMMIT is done (the workers
# read and answer requests; jobs arriving meanwhile wait for the next batch either way),
# so for a small batch the hand-off to the thread and back was pure cost: renewals over
# one connection took 130-150 us less of the writer's CPU each (a quarter of it) and ran
# a fifth faster (docs/performance.md, stop 26). A larger batch leaves the loop free to
# read the next batch's jobs during the flush. A broker in one process keeps the thread for every
# batch: its loop also serves requests, which must not wait on the disk.
WRITER_LOOP_COMMIT_JOBS = 4
# How long a batch waits for another process to release the database's write lock
# before its requests are refused with 503 (the loop never blocks on it: it sleeps).
BUSY_WAIT = 2.0
# How often the WAL is checkpointed into the database file, outside the write path.
CHECKPOINT_SECONDS = 0.5
# Once a checkpoint finds the WAL this many frames long (pages: 16 MiB of 4 KiB ones), the
# writer starts it again from its beginning (see ``_restart_wal``).
WAL_RESTART_FRAMES = 4096
# How long a commit that changed rows vouches for the database being writable: within
# it, ``ping`` (``/healthz``) writes nothing; after it, ``ping`` writes one row.
PROBE_SECONDS = 1.0
# Below this much free space on the database's filesystem ``ping`` reports the disk full:
# a one-row probe can still commit into WAL space already allocated while any larger
# write fails for want of a new page.
MIN_FREE_BYTES = 1 << 20


def load_queries() -> dict[str, str]:
    """This store's named SQL statements, from ``queries/*.sql``."""
    return read_queries(resources.files("broker.store") / "queries")


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration of this store, in order."""
    return read_migrations(resources.files("broker.store") / "migrations")


def migrate(conn: sqlite3.Connection, upto: int | None = None) -> int:
    """Bring the schema up to date in place (never recreating it); returns the version.

    Raises ``SchemaTooNew`` on a database a newer broker has migrated beyond what this
    one knows: running on it would misread rows this broker has no notion of.
    """
    current = conn.execute("PRAGMA user_version").fetchone()["user_version"]
    known = migrations()
    newest = known[-1][0] if known else 0
    if current > newest:
        raise SchemaTooNew(current, newest)
    for version, name, sql in known:
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


# SQLite names a UNIQUE index's violation by its columns and an unnamed CHECK by its
# expression; these are the stable names (``broker.store.base``) of the constraints the
# domain answers for. Any other constraint is named after its table and columns (as
# PostgreSQL names a UNIQUE constraint by default) or its CHECK expression.
_UNIQUE_NAMES = {
    "pools.estate_id, pools.name_key": "pools_name",
    "leases.server_id, leases.encoder": "leases_encoder",
}
_CHECK_NAMES = {
    "leased >= 0 AND leased <= allocated": "holdings_leased",
    "allocated >= 0": "holdings_allocated",
}
_VIOLATION = re.compile(r"^(UNIQUE|CHECK|NOT NULL) constraint failed: (.*)$")


def constraint_name(exc: sqlite3.IntegrityError) -> str:
    """The stable name of the constraint SQLite reports in ``exc``."""
    match = _VIOLATION.match(str(exc))
    if match is None:
        return "foreign_key" if "FOREIGN KEY" in str(exc) else "unknown"
    kind, what = match.groups()
    if kind == "CHECK":
        return _CHECK_NAMES.get(what) or what
    if kind == "UNIQUE" and what in _UNIQUE_NAMES:
        return _UNIQUE_NAMES[what]
    columns = [c.strip() for c in what.split(",")]
    table = columns[0].split(".")[0]
    suffix = "key" if kind == "UNIQUE" else "not_null"
    return "_".join([table, *(c.split(".")[-1] for c in columns), suffix])


def _violated(exc: sqlite3.IntegrityError) -> ConstraintViolated:
    name = constraint_name(exc)
    log.warning("constraint %s refused a write: %s", name, exc)
    return ConstraintViolated(name)


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def chain_link(prev_hash: str, canonical: bytes) -> str | None:
    """``broker.audit.link`` inside SQLite (``tenure_chain_link``), for the ``event_append``
    query: SHA-256 over ``prev_hash``'s ASCII bytes followed by the event's canonical bytes;
    None for ``""`` (the estate's newest event is not chained yet)."""
    if not prev_hash:
        return None
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def connect(path: Path, synchronous: str = "full") -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=2.0,
        cached_statements=512,
    )
    conn.row_factory = _dict_row
    conn.create_function("tenure_chain_link", 2, chain_link, deterministic=True)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 2000")
    return conn


class SqliteTx:
    def __init__(self, conn: sqlite3.Connection, queries: Mapping[str, str], ids: IdSource) -> None:
        self._conn = conn
        self._q = queries
        self._names: dict[str, list[str]] = {}
        self._ids = ids

    def _columns(self, query: str, cursor: sqlite3.Cursor) -> list[str]:
        names = self._names.get(query)
        if names is None:
            names = self._names[query] = [d[0] for d in cursor.description]
        return names

    def _execute(self, query: str, params: Mapping[str, Any]) -> sqlite3.Cursor:
        try:
            return self._conn.execute(self._q[query], params)
        except sqlite3.IntegrityError as exc:
            raise _violated(exc) from exc

    def one(self, query: str, **params: Any) -> Row | None:
        cursor = self._execute(query, params)
        raw = cursor.fetchone()
        if raw is None:
            return None
        return dict(zip(self._columns(query, cursor), raw, strict=True))

    def all(self, query: str, **params: Any) -> list[Row]:
        cursor = self._execute(query, params)
        raws = cursor.fetchall()
        if not raws:
            return []
        names = self._columns(query, cursor)
        return [dict(zip(names, raw, strict=True)) for raw in raws]

    def scalar(self, query: str, **params: Any) -> Any:
        raw = self._execute(query, params).fetchone()
        return None if raw is None else raw[0]

    def run(self, query: str, **params: Any) -> int:
        return self._execute(query, params).rowcount

    def run_many(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        try:
            self._conn.executemany(self._q[query], rows)
        except sqlite3.IntegrityError as exc:
            raise _violated(exc) from exc

    def new_id(self, prefix: str) -> str:
        return self._ids(prefix)


@dataclass
class _Job:
    fn: Callable[[Tx], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass
class _Outcome:
    job: _Job
    ok: bool
    value: Any = field(default=None)


_STOP = object()


def _is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock we asked for (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


class SqliteStore:
    """``Store`` on one SQLite file. Create with ``await SqliteStore.open(path)``.

    Writes must come from the event loop the store was opened on. New rows take their
    ids from ``ids`` (random by default).
    """

    def __init__(self, path: Path, synchronous: str = "full", ids: IdSource = new_id) -> None:
        self.path = path
        self.synchronous = synchronous
        self.ids = ids
        self.stats = StoreStats()
        self._queries = load_queries()
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reader_thread = threading.Thread(target=self._reader, name="tenure-db-reader", daemon=True)
        self._checkpointer: asyncio.Task[None] | None = None
        self._closed = False
        # The write path: jobs waiting for the next batch, the flusher task draining
        # them, the write connection (used on the loop, and by the committer thread for
        # COMMIT only while the loop waits for it), and that thread.
        self._pending: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._tx: SqliteTx | None = None
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="tenure-db-committer")
        # Set by a checkpoint that found the WAL long: the flusher restarts it.
        self._wal_long = False
        # When a commit that changed rows last succeeded (time.monotonic()); 0 after a
        # failed commit, so that readiness is proved by a fresh write, never assumed.
        self._written_at = 0.0
        # Batches of at most this many jobs COMMIT on the loop when no job waits (0:
        # never); the writer process sets WRITER_LOOP_COMMIT_JOBS.
        self.loop_commit_jobs = 0

    @classmethod
    async def open(cls, path: Path, synchronous: str = "full", ids: IdSource = new_id) -> SqliteStore:
        store = cls(path, synchronous, ids)
        await asyncio.to_thread(store._prepare)
        await store._reconnect()
        store._reader_thread.start()
        store._checkpointer = asyncio.get_running_loop().create_task(store._checkpoints())
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

    async def write(self, fn: Callable[[Tx], T], *, lane: str | None = None) -> T:
        # Every write here already runs one at a time: lanes mean nothing to this store.
        return await self.submit(fn)

    def submit(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        """``write`` without a coroutine: the future of ``fn``'s result, settled once its
        batch is durable (the writer process of ``broker.store.relay`` answers each job
        from it, with no task per job)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.set_exception(StorageUnavailable("the store is closed"))
            return future
        self._pending.append(_Job(fn, loop, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return future

    async def read(self, fn: Callable[[Tx], T]) -> T:
        if self._closed:
            raise StorageUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        started = time.perf_counter()
        self._reads.put(_Job(fn, loop, future))
        try:
            return await future
        finally:
            self.stats.read_seconds.observe(time.perf_counter() - started)

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the database can be written now.

        A commit that changed rows within ``PROBE_SECONDS`` is proof enough; otherwise one
        row is updated through the group-commit writer, joining whatever batch is next
        (it neither waits for nor delays the requests in it).
        """
        self._check_free_space()
        if time.monotonic() - self._written_at < PROBE_SECONDS:
            return
        await self.write(lambda tx: tx.run("health_probe", now=int(time.time())))

    def _check_free_space(self) -> None:
        """One statvfs call (microseconds): space root may use if we are root, as SQLite may."""
        try:
            fs = os.statvfs(self.path.parent)
        except OSError as exc:
            raise StorageUnavailable(f"cannot inspect the database's filesystem: {exc.strerror}") from exc
        blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
        if blocks * fs.f_frsize < MIN_FREE_BYTES:
            raise StorageUnavailable("the disk holding the database is full")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await asyncio.shield(self._flusher)  # every accepted write is answered
        self._reads.put(_STOP)
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        if self._reader_thread.is_alive():
            await asyncio.to_thread(self._reader_thread.join)
        await self._drop_conn()
        self._committer.shutdown(wait=False)

    # -- the write path (event loop) -------------------------------------------

    def _connect_writer(self) -> sqlite3.Connection:
        """The write connection (run in the committer thread: opening touches the disk)."""
        conn = connect(self.path, self.synchronous)
        conn.row_factory = None  # SqliteTx builds the dicts, with column names read once
        conn.execute("PRAGMA busy_timeout = 0")  # it is used on the loop: never wait on a lock
        # No checkpoint inside a COMMIT: it would stall every request waiting for the next
        # batch while the database file is written and flushed. _checkpoints does it.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        # Each job of a batch runs in a SAVEPOINT, whose journal keeps the earlier contents
        # of the pages it changes. SQLite keeps that journal in memory only up to 64 KB,
        # then moves it to a file of its own in /var/tmp, made and unlinked for every such
        # batch: with a batch of acquires it did so on every COMMIT (10-30 µs of the
        # writer's CPU per acquire, docs/performance.md), and a broker with no writable
        # temporary directory (/var/tmp, /tmp or its working directory: a read-only
        # container) could not commit one. In memory it is freed at each RELEASE.
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    async def _drop_conn(self) -> None:
        old, self._conn, self._tx = self._conn, None, None
        if old is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._committer, old.close)
            except (sqlite3.Error, RuntimeError) as exc:
                log.warning("closing the failed database connection: %s", exc)

    async def _reconnect(self) -> bool:
        await self._drop_conn()
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(self._committer, self._connect_writer)
        except sqlite3.Error:
            log.exception("cannot open the database for writing")
            return False
        self._conn, self._tx = conn, SqliteTx(conn, self._queries, self.ids)
        return True

    async def _flush(self) -> None:
        """Run batches until no write is waiting: one transaction and one COMMIT each."""
        try:
            while self._pending:
                if self._wal_long and self._conn is not None:
                    await self._restart_wal(self._conn)
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                _settle_all(await self._run_batch(batch))
                if self._pending:
                    # Let the callers just answered send their responses, and requests
                    # already read join the next batch, before the loop is taken again:
                    # one turn for the callers to resume, and one more for what they leave
                    # to the end of their turn (the writer of ``broker.store.relay`` sends
                    # a batch's answers in one write then). With one turn, those answers
                    # waited behind the next batch's jobs (up to BATCH_LOOP_SECONDS).
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
        finally:
            self._flusher = None

    async def _restart_wal(self, conn: sqlite3.Connection) -> None:
        """Checkpoint, on the write connection between two batches, what the last ones added
        since the background checkpoint, so that the next BEGIN finds the WAL copied whole and
        SQLite writes it again from its beginning.

        SQLite restarts the WAL only there: when a write transaction begins with every frame
        already in the database file. Under steady load the writer begins the next batch the
        moment the last one commits, the background checkpoint never catches up in between,
        and the WAL grew without end: to 3.3 GB in the 100,000-lease run, slowing every
        commit, checkpoint and page lookup with it. This costs one small checkpoint (the
        pages of a batch or two, and a flush) once the WAL is long; requests arriving
        meanwhile join the next batch. A reader inside a transaction may still hold the old
        WAL: the next checkpoint then finds it long again, and it is tried again.
        """
        loop = asyncio.get_running_loop()
        try:
            row = await loop.run_in_executor(
                self._committer, lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            )
        except (sqlite3.Error, RuntimeError) as exc:  # the next batch finds out for itself
            log.warning("WAL checkpoint on the write connection failed: %s", exc)
            return
        if row is not None and not row[0]:  # not busy: another checkpoint was not running
            self._wal_long = False

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, sleeping (never blocking) while another process writes."""
        deadline = 0.0
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                deadline = deadline or now + BUSY_WAIT
                if now >= deadline:
                    raise
                await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 (jitter)
                delay = min(delay * 2, 0.05)

    async def _commit(self, conn: sqlite3.Connection, jobs: int) -> None:
        """COMMIT in the committer thread: the flush that makes the batch durable (on the
        loop, for a small batch with nothing waiting: ``WRITER_LOOP_COMMIT_JOBS``)."""
        if jobs <= self.loop_commit_jobs and not self._pending:
            conn.execute("COMMIT")
            return
        await asyncio.get_running_loop().run_in_executor(self._committer, conn.execute, "COMMIT")

    async def _run_batch(self, batch: list[_Job]) -> list[_Outcome]:
        if self._conn is None:
            await self._reconnect()
        conn, tx = self._conn, self._tx
        if conn is None or tx is None:
            failure = StorageUnavailable("the database cannot be opened")
            return [_Outcome(job, False, failure) for job in batch]
        outcomes: list[_Outcome] = []
        changes = conn.total_changes
        started = time.perf_counter()
        try:
            await self._begin(conn)
            on_loop = time.perf_counter()
            for i, job in enumerate(batch):
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(tx)
                except sqlite3.Error:
                    raise  # the database itself failed: the whole batch fails below
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append(_Outcome(job, False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append(_Outcome(job, True, result))
                if time.perf_counter() - on_loop > BATCH_LOOP_SECONDS and i + 1 < len(batch):
                    # The loop has other work (answers to send, requests to read): the
                    # rest waits for the next batch, ahead of anything newer.
                    self._pending[:0] = batch[i + 1 :]
                    batch = batch[: i + 1]
                    break
            self.stats.write_jobs += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            self.stats.batch_jobs.observe(len(batch))
            await self._commit(conn, len(batch))
            self.stats.commits += 1
            self.stats.commit_seconds.observe(time.perf_counter() - started)
            if conn.total_changes != changes:  # a COMMIT that wrote nothing proves nothing
                self._written_at = time.monotonic()
        except (sqlite3.Error, RuntimeError) as exc:
            # RuntimeError: the committer thread is gone (shutting down).
            self.stats.failed_commits += 1
            self._written_at = 0.0
            log.error("write transaction failed, %d request(s) refused: %s", len(batch), exc)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("rollback failed; reopening the database connection")
            # Start the next batch on a fresh connection: one opened while the file was
            # unwritable is read-only for good, and one whose rollback failed may still
            # be inside the dead transaction.
            await self._drop_conn()
            failure = StorageUnavailable("the database cannot be written now; nothing was changed")
            return [_Outcome(job, False, failure) for job in batch]
        return outcomes

    # -- checkpoints (a task on the loop, an aiosqlite connection) ---------------

    async def _checkpoints(self) -> None:
        """Copy the WAL back into the database file beside the writer, never in its way.

        PASSIVE checkpoints neither wait for nor block the writer. SQLite restarts the WAL
        from its beginning when a write begins once it has been checkpointed entirely; one
        that finds it long has the flusher see to that (``_restart_wal``), so it stays small. One
        statement every ``CHECKPOINT_SECONDS`` is what aiosqlite suits: its connection
        thread does the disk work and the loop only awaits it.
        """
        conn: aiosqlite.Connection | None = None
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_SECONDS)
                try:
                    conn = conn or await aiosqlite.connect(self.path, timeout=2.0, isolation_level=None)
                    row = await (await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")).fetchone()
                    self.stats.checkpoints += 1
                    if row is not None and row[1] >= WAL_RESTART_FRAMES:  # (busy, frames, copied)
                        self._wal_long = True
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed (retried): %s", exc)
                    if conn is not None:
                        await _close_quietly(conn)
                    conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # leave little to recover
                await _close_quietly(conn)

    # -- the reader thread -------------------------------------------------------

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
        tx = SqliteTx(conn, self._queries, self.ids) if conn is not None else None
        while True:
            job = self._reads.get()
            if job is _STOP:
                break
            if conn is None:
                conn = self._open_conn()
                tx = SqliteTx(conn, self._queries, self.ids) if conn is not None else None
            if conn is None:
                _deliver([_Outcome(job, False, StorageUnavailable("the database cannot be opened"))])
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
                _deliver([_Outcome(job, False, StorageUnavailable("the database cannot be read now"))])
            except BaseException as exc:
                _deliver([_Outcome(job, False, exc)])
            else:
                _deliver([_Outcome(job, True, result)])
        if conn is not None:
            conn.close()


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    try:
        await conn.close()
    except sqlite3.Error as exc:
        log.warning("closing the checkpoint connection: %s", exc)


def _deliver(outcomes: list[_Outcome]) -> None:
    """Hand results from a thread to their event loops: one wake-up per loop, not per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome.job.loop, []).append(outcome)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, items)
        except RuntimeError:
            log.debug("event loop closed; %d answer(s) dropped", len(items))


def _settle_all(items: list[_Outcome]) -> None:
    for outcome in items:
        future = outcome.job.future
        if future.done():  # the caller went away (cancelled)
            continue
        if outcome.ok:
            future.set_result(outcome.value)
        else:
            future.set_exception(outcome.value)
