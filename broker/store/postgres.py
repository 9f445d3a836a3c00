"""The PostgreSQL store: several broker replicas on one database (extra ``tenure[postgres]``).

The driver is psycopg 3 used synchronously, one transaction per hand-off to a thread:
``write`` and ``read`` pass the domain's plain function to a worker thread, which takes a
connection from a ``psycopg_pool`` pool, runs the whole transaction there and hands back
the answer (docs/design.md, "PostgreSQL driver", says why this shape and this driver).

Isolation: every write runs ``SERIALIZABLE``. PostgreSQL refuses, with a serialization
failure, any transaction whose commit would make the history not equivalent to some
serial order; that transaction is rolled back and its *whole function* run again on a
fresh transaction (``MAX_TRIES`` times, after jittered pauses), as ``broker.store.base``
requires. A deadlock is retried the same way. So the domain's check-then-write code is
as safe here as under SQLite's single writer, with no locking of its own.

Retries would be most of the work where many requests change the same rows at once (an
estate's acquires all update its holding rows). A write may therefore name a ``lane``:
writes of one lane take a session-level advisory lock on it before ``BEGIN``, so they
run one at a time across every replica, each starting from a snapshot that already holds
the previous one's commit, and do not fail each other. (Within a replica they first queue
on an ``asyncio.Lock``, so that waiting ties up no connection.) The lane is a hint for
speed only: two writes in different lanes, or none, that touch the same rows are still
kept serializable by PostgreSQL.

Reads run in ``REPEATABLE READ READ ONLY`` transactions: one snapshot, never a
serialization failure.

Faults: a connection that breaks before ``COMMIT`` was sent is dropped and the function
run again on another (the server rolled the broken transaction back); one that breaks
during ``COMMIT`` leaves the outcome unknown, and the caller gets ``StorageUnavailable``.
When no connection can be had within ``timeout`` (the server is down or restarting),
the request is refused with ``StorageUnavailable`` and the pool keeps reconnecting in the
background (each lost connection for ``RECONNECT_SECONDS``, then afresh at the next
request), so the broker recovers by itself within about a second of the server's return.
A host that vanishes without a word (no reset) is noticed within ``timeout`` as well: what
is sent must be acknowledged by then (``_tcp_timeouts``), or the connection fails.

Schema: migrations in ``migrations_postgres/`` are applied at open under an advisory
lock, so that replicas starting together apply each exactly once while the others wait;
``tenure_schema`` records the version.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from broker.errors import ConstraintViolated, StorageUnavailable
from broker.ids import IdSource, new_id
from broker.store.base import Row, SchemaTooNew, StoreStats, Tx, read_migrations, read_queries

log = logging.getLogger("tenure.store")
T = TypeVar("T")

# How many times a write function is run before a serialization failure, deadlock or
# broken connection is answered with StorageUnavailable.
MAX_TRIES = 20
# Pauses between tries: jittered, doubling from FIRST_PAUSE up to MAX_PAUSE seconds.
FIRST_PAUSE = 0.002
MAX_PAUSE = 0.1
# How many of those tries may answer a unique violation by running again (_write_once).
UNIQUE_RETRIES = 2
PROBE_SECONDS = 1.0  # as SqliteStore: a recent write vouches for the database being writable
# How long the pool goes on trying to replace one lost connection before it gives up (and
# the next request that finds no connection starts afresh). psycopg_pool doubles the pause
# between tries (1, 2, 4, 8 s ...) until this runs out; its default, 300 s, would leave a
# broker whose database came back after a minute's outage refusing requests for up to a
# minute more. Bounded so, the broker connects again within about a second of the
# database's return, whatever the outage's length (docs/design.md, Storage, "Faults").
RECONNECT_SECONDS = 2.0
# The advisory lock (a fixed 64-bit key) under which migrations are applied.
MIGRATION_LOCK = 0x7465_6E75_7265_0001  # "tenure" + 1
_RETRY = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_COMMENT = re.compile(r"^\s*--.*$", re.MULTILINE)


def to_pyformat(sql: str) -> str:
    """A query of the shared ``:name`` style in psycopg's ``%(name)s`` style (comments
    dropped, ``%`` doubled; ``::type`` casts left alone)."""
    sql = _COMMENT.sub("", sql).strip()
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def load_queries() -> dict[str, str]:
    """This store's named SQL statements, from ``queries_postgres/*.sql``."""
    found = read_queries(resources.files("broker.store") / "queries_postgres")
    return {name: to_pyformat(sql) for name, sql in found.items()}


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration of this store, in order."""
    return read_migrations(resources.files("broker.store") / "migrations_postgres")


def migrate(conn: psycopg.Connection[Any], upto: int | None = None) -> int:
    """Bring the schema up to date under the migration lock; returns the version.

    ``conn`` is in autocommit mode. Each migration is one transaction; another replica
    calling this meanwhile waits for the lock, then finds the work done.
    """
    # A replica waits for another's migrations however long they take (lock_timeout,
    # set on every pooled connection for requests, does not apply to this wait).
    row = conn.execute("SHOW lock_timeout").fetchone()
    bound = row[0] if row is not None else "0"
    conn.execute("SET lock_timeout = 0")
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (bound,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS tenure_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM tenure_schema").fetchone()
        current = int(row[0]) if row is not None and row[0] is not None else 0
        known = migrations()
        newest = known[-1][0] if known else 0
        if current > newest:
            raise SchemaTooNew(current, newest)
        for version, name, sql in known:
            if version <= current or (upto is not None and version > upto):
                continue
            log.info("applying schema migration %s", name)
            with conn.transaction():
                conn.execute(sql.encode())  # no parameters: several statements at once
                conn.execute("INSERT INTO tenure_schema (version) VALUES (%s)", (version,))
            current = version
        return current
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


# -- constraint names ---------------------------------------------------------------


def constraint_name(exc: pg_errors.IntegrityError) -> str:
    """The stable name (``broker.store.base``) of the constraint ``exc`` reports.

    The four the domain answers for are named so in the schema (the partial unique
    indexes ``pools_name`` and ``leases_encoder``, the CHECKs ``holdings_leased`` and
    ``holdings_allocated``). A NOT NULL is ``<table>_<column>_not_null`` and a foreign
    key ``foreign_key``, as SqliteStore names them; any other keeps PostgreSQL's name.
    """
    diag = exc.diag
    if isinstance(exc, pg_errors.NotNullViolation):
        return f"{diag.table_name}_{diag.column_name}_not_null"
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return "foreign_key"
    return diag.constraint_name or "unknown"


def _violated(exc: pg_errors.IntegrityError) -> ConstraintViolated:
    name = constraint_name(exc)
    log.warning("constraint %s refused a write: %s", name, str(exc).splitlines()[0])
    return ConstraintViolated(name)


class PostgresTx:
    def __init__(self, conn: psycopg.Connection[Any], queries: Mapping[str, str], ids: IdSource) -> None:
        self._cur = conn.cursor(row_factory=dict_row)
        self._q = queries
        self._ids = ids
        # A unique key was taken by another transaction: maybe one that committed after
        # this one's snapshot, which a serial order would have shown it (see _write_once).
        self.raced = False

    def _execute(self, query: str, params: Mapping[str, Any]) -> psycopg.Cursor[Row]:
        try:
            return self._cur.execute(self._q[query], params)
        except pg_errors.IntegrityError as exc:
            self.raced = self.raced or isinstance(exc, pg_errors.UniqueViolation)
            raise _violated(exc) from exc

    def one(self, query: str, **params: Any) -> Row | None:
        return self._execute(query, params).fetchone()

    def all(self, query: str, **params: Any) -> list[Row]:
        return self._execute(query, params).fetchall()

    def scalar(self, query: str, **params: Any) -> Any:
        row = self._execute(query, params).fetchone()
        return None if row is None else next(iter(row.values()))

    def run(self, query: str, **params: Any) -> int:
        return self._execute(query, params).rowcount

    def run_many(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        try:
            self._cur.executemany(self._q[query], rows)
        except pg_errors.IntegrityError as exc:
            self.raced = self.raced or isinstance(exc, pg_errors.UniqueViolation)
            raise _violated(exc) from exc

    def new_id(self, prefix: str) -> str:
        return self._ids(prefix)


class _Retry(Exception):
    """This try failed in a way that leaves nothing behind: run the function again."""


class _Lanes:
    """One ``asyncio.Lock`` per lane in use, forgotten when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def __call__(self, lane: str, job: Callable[[], Any]) -> Any:
        lock, users = self._locks.get(lane, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[lane] = (lock, users + 1)
        try:
            async with lock:
                return await job()
        finally:
            lock, users = self._locks[lane]
            if users == 1:
                del self._locks[lane]
            else:
                self._locks[lane] = (lock, users - 1)


class PostgresStore:
    """``Store`` on a PostgreSQL database. Create with ``await PostgresStore.open(url)``."""

    def __init__(self, url: str, pool_size: int = 10, wait_seconds: float = 5.0, ids: IdSource = new_id) -> None:
        self.url = url
        self.ids = ids
        self.timeout = wait_seconds
        self.stats = StoreStats()
        self._queries = load_queries()
        self._lanes = _Lanes()
        self._closed = False
        self._written_at = 0.0
        self._stats_lock = threading.Lock()
        self._threads = ThreadPoolExecutor(pool_size, thread_name_prefix="tenure-pg")
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=wait_seconds,
            reconnect_timeout=RECONNECT_SECONDS,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(wait_seconds)), **_tcp_timeouts(wait_seconds)},
            configure=self._configure,
            open=False,
            name="tenure",
        )

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Each new connection: waits bounded, dead peers found (run once, at connect)."""
        # No wait for a lock (a lane's, or a row's) outlasts what a request may wait; one
        # that would is refused (StorageUnavailable) rather than queued without end.
        conn.execute(f"SET lock_timeout = {max(1, round(self.timeout * 1000))}")
        # A transaction left open by a stalled client is ended by the server, and with it
        # every lock it held; keepalives let the server notice a vanished client in ~25 s.
        conn.execute("SET idle_in_transaction_session_timeout = 60000")
        conn.execute("SET tcp_keepalives_idle = 10")
        conn.execute("SET tcp_keepalives_interval = 5")
        conn.execute("SET tcp_keepalives_count = 3")

    @classmethod
    async def open(
        cls, url: str, pool_size: int = 10, wait_seconds: float = 5.0, ids: IdSource = new_id
    ) -> PostgresStore:
        store = cls(url, pool_size, wait_seconds, ids)
        try:
            await asyncio.to_thread(store._prepare)
        except BaseException:
            await asyncio.to_thread(store._pool.close)
            store._threads.shutdown(wait=False)
            raise
        return store

    def _prepare(self) -> None:
        try:
            self._pool.open(wait=True, timeout=self.timeout)
            with self._pool.connection() as conn:
                migrate(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StorageUnavailable(f"cannot open the database {_redacted(self.url)}: {_first_line(exc)}") from exc

    async def write(self, fn: Callable[[Tx], T], *, lane: str | None = None) -> T:
        if self._closed:
            raise StorageUnavailable("the store is closed")
        if lane is None:
            return await self._in_thread(self._write, fn, None)
        result: T = await self._lanes(lane, lambda: self._in_thread(self._write, fn, lane))
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        if self._closed:
            raise StorageUnavailable("the store is closed")
        started = time.perf_counter()
        try:
            return await self._in_thread(self._read, fn)
        finally:
            self.stats.read_seconds.observe(time.perf_counter() - started)

    async def ping(self) -> None:
        if time.monotonic() - self._written_at < PROBE_SECONDS:
            return
        await self.write(lambda tx: tx.run("health_probe", now=int(time.time())))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Every accepted request is answered first (waited for off the loop).
        await asyncio.to_thread(self._threads.shutdown, wait=True)
        await asyncio.to_thread(self._pool.close)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    # -- in the worker threads -------------------------------------------------------

    def _write(self, fn: Callable[[Tx], T], lane: str | None) -> T:
        pause = FIRST_PAUSE
        for attempt in range(1, MAX_TRIES + 1):
            try:
                return self._write_once(fn, lane, retry_unique=attempt <= UNIQUE_RETRIES)
            except _Retry as exc:
                with self._stats_lock:
                    self.stats.retries += 1
                if attempt == MAX_TRIES:
                    self._count(failed=True)
                    raise StorageUnavailable(
                        "the database is too busy to take this change now; nothing was changed"
                    ) from exc.__cause__
                time.sleep(random.uniform(pause / 2, pause))  # noqa: S311 (jitter, not a secret)
                pause = min(pause * 2, MAX_PAUSE)
        raise StorageUnavailable("unreachable")  # pragma: no cover (the loop returns or raises)

    def _write_once(self, fn: Callable[[Tx], T], lane: str | None, *, retry_unique: bool) -> T:
        committing = False
        started = time.perf_counter()
        try:
            with self._pool.connection() as conn:
                if lane is not None:
                    conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lane,))
                try:
                    conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                    tx = PostgresTx(conn, self._queries, self.ids)
                    try:
                        result = fn(tx)
                    except BaseException as exc:
                        conn.execute("ROLLBACK")
                        if tx.raced and retry_unique and not isinstance(exc, _RETRY):
                            # Two transactions inserted the same key (two acquires for one
                            # encoder): PostgreSQL may report it as a unique violation, not a
                            # serialization failure. Run again, as the later of a serial
                            # pair would have run: it now sees the other's row, and answers
                            # as SQLite's single writer does. A violation that persists is real.
                            raise _Retry from exc
                        raise
                    committing = True
                    conn.execute("COMMIT")
                finally:
                    if lane is not None and not conn.closed:
                        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lane,))
        except _RETRY as exc:
            raise _Retry from exc
        except psycopg_pool.PoolTimeout as exc:
            self._count(failed=True)
            self._written_at = 0.0
            log.error("no database connection within %.1f s: %s", self.timeout, exc)
            raise StorageUnavailable("the database cannot be reached now; nothing was changed") from exc
        except pg_errors.LockNotAvailable as exc:
            self._count(failed=True)
            log.warning("a write waited %.1f s for a lock and gave up: %s", self.timeout, _first_line(exc))
            raise StorageUnavailable("the database is too busy to take this change now; nothing was changed") from exc
        except psycopg.OperationalError as exc:
            self._written_at = 0.0
            self._pool.check()  # drop every other connection the same fault broke
            if not committing:
                log.warning("database connection lost before COMMIT; trying again: %s", _first_line(exc))
                raise _Retry from exc
            self._count(failed=True)
            log.error("database connection lost during COMMIT: %s", _first_line(exc))
            raise StorageUnavailable("the database connection was lost while committing this change") from exc
        except (pg_errors.InsufficientResources, pg_errors.ReadOnlySqlTransaction) as exc:
            # A full disk, too many connections, a standby: the database refuses writes.
            self._count(failed=True)
            self._written_at = 0.0
            log.error("the database refused a write: %s", _first_line(exc))
            raise StorageUnavailable("the database cannot be written now; nothing was changed") from exc
        self._count(failed=False, seconds=time.perf_counter() - started)
        self._written_at = time.monotonic()
        return result

    def _read(self, fn: Callable[[Tx], T]) -> T:
        with self._stats_lock:
            self.stats.read_jobs += 1
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn:
                    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    try:
                        return fn(PostgresTx(conn, self._queries, self.ids))
                    finally:
                        if not conn.closed:
                            conn.execute("ROLLBACK")
            except psycopg_pool.PoolTimeout as exc:
                self._written_at = 0.0  # no recent write vouches for the database now (ping)
                raise StorageUnavailable("the database cannot be reached now") from exc
            except psycopg.OperationalError as exc:
                # A connection the server dropped (a restart, pg_terminate_backend): the
                # others in the pool went with it. A read is safe to run again at once.
                self._written_at = 0.0
                self._pool.check()
                log.warning("read failed: %s", _first_line(exc))
                if attempt == 2:
                    raise StorageUnavailable("the database cannot be read now") from exc
        raise StorageUnavailable("unreachable")  # pragma: no cover (the loop returns or raises)

    def _count(self, *, failed: bool, seconds: float = 0.0) -> None:
        with self._stats_lock:
            stats = self.stats
            stats.write_jobs += 1
            stats.batch_jobs.observe(1)
            stats.largest_batch = max(stats.largest_batch, 1)
            if failed:
                stats.failed_commits += 1
            else:
                stats.commits += 1
                stats.commit_seconds.observe(seconds)


def _tcp_timeouts(seconds: float) -> dict[str, int]:
    """libpq settings under which a connection to a host that has vanished (powered off,
    partitioned: no reset comes back) fails within about ``seconds``. Without them a
    query sent on it waits for TCP to give up (some 15 minutes), holding its worker thread
    and its connection, and one that had been sent waits for an answer for hours. What
    is sent must be acknowledged within ``seconds`` (``tcp_user_timeout``, Linux), and a
    connection waiting for an answer is probed every ``seconds`` (keepalives; a live
    server's kernel acknowledges the probes however long the query runs)."""
    whole = max(1, round(seconds))
    return {
        "tcp_user_timeout": round(seconds * 1000),
        "keepalives": 1,
        "keepalives_idle": whole,
        "keepalives_interval": whole,
        "keepalives_count": 3,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``, for log lines and messages."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)
