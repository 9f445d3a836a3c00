"""``python -m bench.pgdrivers``: asyncpg against psycopg 3 on broker-shaped transactions.

Chooses the PostgreSQL store's driver by measurement. Against the local PostgreSQL
(``--dsn``, a temporary database ``tenure_bench_<pid>``, dropped at the end however the run
ends) it runs, through a pool of ``--pool`` connections:

- ``read1``: one indexed SELECT (a token lookup) in a REPEATABLE READ READ ONLY transaction;
- ``read5``: five small indexed SELECTs (a pool view) in one such transaction;
- ``acquire``: BEGIN ISOLATION LEVEL SERIALIZABLE; server by token, the encoder's active
  lease, the pool, its grantable holdings, ``UPDATE holdings … leased + n <= allocated
  RETURNING``, INSERT lease, INSERT lease seat, INSERT audit event; COMMIT — re-run whole on
  a serialization failure or deadlock (counted) after a jittered pause of up to 2 ms. The
  64 servers share 8 pools, so concurrent acquires contend for the same holding rows.

Drivers, each used the way it does best:

- ``asyncpg``: its pool; every statement goes through the automatic prepared-statement cache.
- ``psycopg``: ``AsyncConnectionPool``, ``prepare_threshold=0`` (server-side prepared from
  the first use), one round trip per statement.
- ``psycopg+pipe``: the same, with pipeline mode where statements do not depend on each
  other (the five reads; the three INSERTs and the COMMIT).
- ``psycopg-threads``: the synchronous API on a thread per connection, one hand-off from
  the loop per transaction: the shape the store's synchronous ``Tx`` seam allows.

At 1 and 64 concurrent tasks, in interleaved rounds, it prints transactions/s, p50/p99
latency, client CPU per transaction (``time.process_time``), the CPU of the database's
backends per transaction (``/proc/<pid>/stat`` of the pool's backends) and of every
``postgres`` process (adds the WAL writer and other helpers), and retries per 100
transactions. Linux only; the server must be on this machine for the server CPU columns.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import re
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = 64
POOLS = 8  # servers spread over them: acquires on one pool's holding row collide, as in the broker
SCHEMA = """
CREATE TABLE pools (id TEXT PRIMARY KEY, estate_id TEXT NOT NULL, name TEXT NOT NULL,
                    lease_seconds INTEGER NOT NULL, deleted_at BIGINT);
CREATE INDEX pools_estate ON pools(estate_id);
CREATE TABLE purchases (id TEXT PRIMARY KEY, estate_id TEXT NOT NULL, sales_order TEXT NOT NULL,
                        licence_type TEXT NOT NULL, expires_at BIGINT NOT NULL, status TEXT NOT NULL);
CREATE TABLE holdings (
    pool_id TEXT NOT NULL REFERENCES pools(id), purchase_id TEXT NOT NULL REFERENCES purchases(id),
    allocated INTEGER NOT NULL CHECK (allocated >= 0),
    leased INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT holdings_leased CHECK (leased >= 0 AND leased <= allocated),
    PRIMARY KEY (pool_id, purchase_id));
CREATE TABLE servers (id TEXT PRIMARY KEY, estate_id TEXT NOT NULL, pool_id TEXT NOT NULL REFERENCES pools(id),
                      name TEXT NOT NULL, token_hash BYTEA NOT NULL UNIQUE, removed_at BIGINT);
CREATE TABLE leases (
    id TEXT PRIMARY KEY, estate_id TEXT NOT NULL, pool_id TEXT NOT NULL REFERENCES pools(id),
    server_id TEXT NOT NULL REFERENCES servers(id), encoder TEXT NOT NULL, licence_type TEXT NOT NULL,
    count INTEGER NOT NULL CHECK (count > 0), state TEXT NOT NULL, created_at BIGINT NOT NULL,
    renewed_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, ended_at BIGINT, end_reason TEXT);
CREATE UNIQUE INDEX leases_encoder ON leases(server_id, encoder) WHERE state = 'active';
CREATE INDEX leases_pool_expiry ON leases(pool_id, expires_at) WHERE state = 'active';
CREATE TABLE lease_seats (
    lease_id TEXT NOT NULL REFERENCES leases(id), purchase_id TEXT NOT NULL REFERENCES purchases(id),
    pool_id TEXT NOT NULL, count INTEGER NOT NULL CHECK (count > 0), PRIMARY KEY (lease_id, purchase_id));
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, estate_id TEXT, at BIGINT NOT NULL,
    actor_kind TEXT NOT NULL, actor_id TEXT, action TEXT NOT NULL, pool_id TEXT, subject_id TEXT,
    details TEXT NOT NULL);
CREATE INDEX events_estate ON events(estate_id, id);
"""

# The statements, numbered ($1) for asyncpg; psycopg gets the same text with %s.
SERVER_BY_TOKEN = "SELECT id, estate_id, pool_id, name FROM servers WHERE token_hash = $1 AND removed_at IS NULL"
POOL_BY_ID = "SELECT id, estate_id, name, lease_seconds FROM pools WHERE id = $1 AND deleted_at IS NULL"
HOLDINGS_OF_POOL = (
    "SELECT h.purchase_id, h.allocated, h.leased, p.sales_order, p.expires_at FROM holdings h"
    " JOIN purchases p ON p.id = h.purchase_id WHERE h.pool_id = $1 ORDER BY p.expires_at, p.id"
)
POOLS_OF_ESTATE = "SELECT id, name FROM pools WHERE estate_id = $1 AND deleted_at IS NULL ORDER BY name"
LEASE_OF_ENCODER = "SELECT id, count, expires_at FROM leases WHERE server_id = $1 AND encoder = $2 AND state = 'active'"
GRANTABLE = (
    "SELECT h.purchase_id, h.allocated, h.leased FROM holdings h JOIN purchases p ON p.id = h.purchase_id"
    " WHERE h.pool_id = $1 AND p.licence_type = $2 AND p.status = 'valid' AND p.expires_at > $3"
    " AND h.allocated > h.leased ORDER BY p.expires_at, p.id"
)
HOLDING_LEASE = (
    "UPDATE holdings SET leased = leased + $3 WHERE pool_id = $1 AND purchase_id = $2"
    " AND leased + $3 <= allocated RETURNING leased"
)
LEASE_INSERT = (
    "INSERT INTO leases (id, estate_id, pool_id, server_id, encoder, licence_type, count, state,"
    " created_at, renewed_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $8, $9)"
)
SEAT_INSERT = "INSERT INTO lease_seats (lease_id, purchase_id, pool_id, count) VALUES ($1, $2, $3, $4)"
EVENT_INSERT = (
    "INSERT INTO events (estate_id, at, actor_kind, actor_id, action, pool_id, subject_id, details)"
    " VALUES ($1, $2, 'server', $3, 'lease.acquired', $4, $5, $6)"
)
BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
BEGIN_WRITE = "BEGIN ISOLATION LEVEL SERIALIZABLE"


def _ps(sql: str) -> tuple[str, list[int]]:
    """The statement with psycopg's ``%s`` placeholders, and which ``$n`` argument fills each."""
    order = [int(n) - 1 for n in re.findall(r"\$(\d+)", sql)]
    return re.sub(r"\$\d+", "%s", sql), order


class Pg:
    """One statement for psycopg: called with the same arguments as for asyncpg."""

    def __init__(self, sql: str) -> None:
        self.sql, self.order = _ps(sql)

    def args(self, *args: Any) -> list[Any]:
        return [args[k] for k in self.order]


def backoff() -> float:
    """Seconds to wait before re-running a transaction that lost a conflict: jittered, so the
    losers do not collide again in step (the same for every driver)."""
    return random.uniform(0, 0.002)


def token(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


@dataclass
class Counters:
    begin_write: str = BEGIN_WRITE
    retries: int = 0
    encoders: itertools.count[int] = field(default_factory=itertools.count)


Read = Callable[[int], Awaitable[object]]  # argument: the server's index


# --- asyncpg ---------------------------------------------------------------------------------


def asyncpg_ops(pool: asyncpg.Pool, c: Counters) -> dict[str, Read]:
    async def read1(i: int) -> object:
        async with pool.acquire() as conn:
            await conn.execute(BEGIN_READ)
            try:
                return await conn.fetchrow(SERVER_BY_TOKEN, token(i))
            finally:
                await conn.execute("COMMIT")

    async def read5(i: int) -> object:
        pool_id = f"p{i % POOLS}"
        async with pool.acquire() as conn:
            await conn.execute(BEGIN_READ)
            try:
                return [
                    await conn.fetchrow(SERVER_BY_TOKEN, token(i)),
                    await conn.fetchrow(POOL_BY_ID, pool_id),
                    await conn.fetch(HOLDINGS_OF_POOL, pool_id),
                    await conn.fetch(POOLS_OF_ESTATE, "e1"),
                    await conn.fetchrow(LEASE_OF_ENCODER, f"s{i}", "enc-none"),
                ]
            finally:
                await conn.execute("COMMIT")

    async def attempt(conn: asyncpg.Connection, i: int, encoder: str) -> object:
        now = int(time.time())
        server = await conn.fetchrow(SERVER_BY_TOKEN, token(i))
        assert server is not None
        if await conn.fetchrow(LEASE_OF_ENCODER, server["id"], encoder) is not None:
            raise RuntimeError("encoder already holds a lease")
        pool_row = await conn.fetchrow(POOL_BY_ID, server["pool_id"])
        holding = (await conn.fetch(GRANTABLE, server["pool_id"], "uhd", now))[0]
        if await conn.fetchrow(HOLDING_LEASE, server["pool_id"], holding["purchase_id"], 1) is None:
            raise RuntimeError("pool exhausted")
        lease_id = f"l-{encoder}"
        expires = now + pool_row["lease_seconds"]
        await conn.execute(
            LEASE_INSERT, lease_id, "e1", server["pool_id"], server["id"], encoder, "uhd", 1, now, expires
        )
        await conn.execute(SEAT_INSERT, lease_id, holding["purchase_id"], server["pool_id"], 1)
        await conn.execute(EVENT_INSERT, "e1", now, server["id"], server["pool_id"], lease_id, '{"count": 1}')
        return lease_id

    async def acquire(i: int) -> object:
        encoder = f"a{next(c.encoders)}"
        async with pool.acquire() as conn:
            while True:
                await conn.execute(c.begin_write)
                try:
                    result = await attempt(conn, i, encoder)
                    await conn.execute("COMMIT")
                    return result
                except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError):
                    await conn.execute("ROLLBACK")
                    c.retries += 1
                    await asyncio.sleep(backoff())
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise

    return {"read1": read1, "read5": read5, "acquire": acquire}


# --- psycopg 3 -------------------------------------------------------------------------------

Q = {
    name: Pg(sql)
    for name, sql in {
        "server": SERVER_BY_TOKEN,
        "pool": POOL_BY_ID,
        "holdings": HOLDINGS_OF_POOL,
        "pools": POOLS_OF_ESTATE,
        "lease": LEASE_OF_ENCODER,
        "grantable": GRANTABLE,
        "take": HOLDING_LEASE,
        "lease_insert": LEASE_INSERT,
        "seat_insert": SEAT_INSERT,
        "event_insert": EVENT_INSERT,
    }.items()
}
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def _read5_statements(i: int) -> list[tuple[Pg, list[Any]]]:
    pool_id = f"p{i % POOLS}"
    return [
        (Q["server"], Q["server"].args(token(i))),
        (Q["pool"], Q["pool"].args(pool_id)),
        (Q["holdings"], Q["holdings"].args(pool_id)),
        (Q["pools"], Q["pools"].args("e1")),
        (Q["lease"], Q["lease"].args(f"s{i}", "enc-none")),
    ]


def _inserts(server: tuple[Any, ...], encoder: str, purchase_id: str, lease_seconds: int, now: int) -> list[Any]:
    server_id, _, pool_id, _ = server
    lease_id = f"l-{encoder}"
    return [
        (
            Q["lease_insert"],
            Q["lease_insert"].args(lease_id, "e1", pool_id, server_id, encoder, "uhd", 1, now, now + lease_seconds),
        ),
        (Q["seat_insert"], Q["seat_insert"].args(lease_id, purchase_id, pool_id, 1)),
        (Q["event_insert"], Q["event_insert"].args("e1", now, server_id, pool_id, lease_id, '{"count": 1}')),
    ]


def psycopg_ops(pool: psycopg_pool.AsyncConnectionPool, c: Counters, pipe: bool) -> dict[str, Read]:
    async def read1(i: int) -> object:
        async with pool.connection() as conn:
            await conn.execute(BEGIN_READ)
            try:
                return await (await conn.execute(Q["server"].sql, Q["server"].args(token(i)))).fetchone()
            finally:
                await conn.execute("COMMIT")

    async def read5(i: int) -> object:
        async with pool.connection() as conn:
            if pipe:  # BEGIN, the five SELECTs and COMMIT in one round trip
                async with conn.pipeline():
                    await conn.execute(BEGIN_READ)
                    curs = [await conn.execute(q.sql, a) for q, a in _read5_statements(i)]
                    await conn.execute("COMMIT")
                return [await cur.fetchall() for cur in curs]
            await conn.execute(BEGIN_READ)
            try:
                return [await (await conn.execute(q.sql, a)).fetchall() for q, a in _read5_statements(i)]
            finally:
                await conn.execute("COMMIT")

    async def attempt(conn: psycopg.AsyncConnection[Any], i: int, encoder: str) -> object:
        now = int(time.time())
        if pipe:
            async with conn.pipeline():
                await conn.execute(c.begin_write)
                cur = await conn.execute(Q["server"].sql, Q["server"].args(token(i)))
            server = await cur.fetchone()
        else:
            await conn.execute(c.begin_write)
            server = await (await conn.execute(Q["server"].sql, Q["server"].args(token(i)))).fetchone()
        assert server is not None
        server_id, _, pool_id, _ = server
        if await (await conn.execute(Q["lease"].sql, Q["lease"].args(server_id, encoder))).fetchone():
            raise RuntimeError("encoder already holds a lease")
        pool_row = await (await conn.execute(Q["pool"].sql, Q["pool"].args(pool_id))).fetchone()
        assert pool_row is not None
        holding = (await (await conn.execute(Q["grantable"].sql, Q["grantable"].args(pool_id, "uhd", now))).fetchall())[
            0
        ]
        if await (await conn.execute(Q["take"].sql, Q["take"].args(pool_id, holding[0], 1))).fetchone() is None:
            raise RuntimeError("pool exhausted")
        writes = _inserts(server, encoder, holding[0], pool_row[3], now)
        if pipe:  # the three INSERTs and COMMIT in one round trip
            async with conn.pipeline():
                for q, a in writes:
                    await conn.execute(q.sql, a)
                await conn.execute("COMMIT")
        else:
            for q, a in writes:
                await conn.execute(q.sql, a)
            await conn.execute("COMMIT")
        return encoder

    async def acquire(i: int) -> object:
        encoder = f"p{int(pipe)}-{next(c.encoders)}"
        async with pool.connection() as conn:
            while True:
                try:
                    return await attempt(conn, i, encoder)
                except RETRYABLE:
                    await conn.execute("ROLLBACK")
                    c.retries += 1
                    await asyncio.sleep(backoff())
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise

    return {"read1": read1, "read5": read5, "acquire": acquire}


def threaded_ops(pool: psycopg_pool.ConnectionPool, c: Counters, executor: ThreadPoolExecutor) -> dict[str, Read]:
    """psycopg's synchronous API, a whole transaction per hand-off to a thread."""

    def read1(i: int) -> object:
        with pool.connection() as conn:
            conn.execute(BEGIN_READ)
            try:
                return conn.execute(Q["server"].sql, Q["server"].args(token(i))).fetchone()
            finally:
                conn.execute("COMMIT")

    def read5(i: int) -> object:
        with pool.connection() as conn:
            conn.execute(BEGIN_READ)
            try:
                return [conn.execute(q.sql, a).fetchall() for q, a in _read5_statements(i)]
            finally:
                conn.execute("COMMIT")

    def attempt(conn: psycopg.Connection[Any], i: int, encoder: str) -> object:
        now = int(time.time())
        conn.execute(c.begin_write)
        server = conn.execute(Q["server"].sql, Q["server"].args(token(i))).fetchone()
        assert server is not None
        server_id, _, pool_id, _ = server
        if conn.execute(Q["lease"].sql, Q["lease"].args(server_id, encoder)).fetchone():
            raise RuntimeError("encoder already holds a lease")
        pool_row = conn.execute(Q["pool"].sql, Q["pool"].args(pool_id)).fetchone()
        assert pool_row is not None
        holding = conn.execute(Q["grantable"].sql, Q["grantable"].args(pool_id, "uhd", now)).fetchall()[0]
        if conn.execute(Q["take"].sql, Q["take"].args(pool_id, holding[0], 1)).fetchone() is None:
            raise RuntimeError("pool exhausted")
        for q, a in _inserts(server, encoder, holding[0], pool_row[3], now):
            conn.execute(q.sql, a)
        conn.execute("COMMIT")
        return encoder

    def acquire(i: int) -> object:
        encoder = f"t-{next(c.encoders)}"
        with pool.connection() as conn:
            while True:
                try:
                    return attempt(conn, i, encoder)
                except RETRYABLE:
                    conn.execute("ROLLBACK")
                    c.retries += 1
                    time.sleep(backoff())
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    def hand_off(fn: Callable[[int], object]) -> Read:
        return lambda i: asyncio.get_running_loop().run_in_executor(executor, fn, i)

    return {"read1": hand_off(read1), "read5": hand_off(read5), "acquire": hand_off(acquire)}


# --- setup, measurement ----------------------------------------------------------------------


def seed(conn: psycopg.Connection[Any]) -> None:
    """The schema, 8 pools of 2 purchases each (room for a billion seats), 64 servers."""
    far = int(time.time()) + 10 * 365 * 86400
    with conn.transaction():
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pools VALUES (%s, 'e1', %s, 60, NULL)", [(f"p{k}", f"pool {k}") for k in range(POOLS)]
            )
            purchases = [(f"u{k}-{j}", f"SO-{k}-{j}", far + j) for k in range(POOLS) for j in range(2)]
            holdings = [(f"p{k}", f"u{k}-{j}") for k in range(POOLS) for j in range(2)]
            cur.executemany("INSERT INTO purchases VALUES (%s, 'e1', %s, 'uhd', %s, 'valid')", purchases)
            cur.executemany("INSERT INTO holdings VALUES (%s, %s, 1000000000, 0)", holdings)
            servers = [(f"s{i}", f"p{i % POOLS}", f"server {i}", token(i)) for i in range(SERVERS)]
            cur.executemany("INSERT INTO servers VALUES (%s, 'e1', %s, %s, %s, NULL)", servers)
    conn.execute("ANALYZE")


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone since listed
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def postgres_pids() -> list[int]:
    """Every process of the local PostgreSQL (backends of all databases, WAL writer, …)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "postgres":
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@dataclass
class Figure:
    rate: float  # transactions/s
    p50_us: float
    p99_us: float
    client_us: float  # this process's CPU per transaction
    backend_us: float  # the pool's backends' CPU per transaction
    server_us: float  # every postgres process's CPU per transaction
    retries: float  # per 100 transactions


async def measure(op: Read, tasks: int, seconds: float, c: Counters, backends: list[int]) -> Figure:
    latencies: list[float] = []
    everyone = postgres_pids()
    retries0, cpu0 = c.retries, time.process_time()
    backend0, server0 = _cpu_ticks(backends), _cpu_ticks(everyone)
    stop = time.perf_counter() + seconds

    async def task() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await op(random.randrange(SERVERS))
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(tasks)))
    elapsed = time.perf_counter() - t0
    n = len(latencies)
    q = statistics.quantiles(latencies, n=100) if n > 1 else [latencies[0]] * 99
    tick_us = 1e6 / CLK_TCK
    return Figure(
        rate=n / elapsed,
        p50_us=statistics.median(latencies) * 1e6,
        p99_us=q[98] * 1e6,
        client_us=(time.process_time() - cpu0) * 1e6 / n,
        backend_us=(_cpu_ticks(backends) - backend0) * tick_us / n,
        server_us=(_cpu_ticks(everyone) - server0) * tick_us / n,
        retries=100 * (c.retries - retries0) / n,
    )


@dataclass
class Driver:
    name: str
    ops: dict[str, Read]
    counters: Counters
    backends: list[int] = field(default_factory=list)


async def run(args: argparse.Namespace, dbname: str, admin: psycopg.Connection[Any]) -> None:
    conninfo = psycopg.conninfo.make_conninfo(host=args.host, port=args.port, user=args.user, dbname=dbname)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        seed(conn)
    size = args.pool

    def pg_kwargs(name: str) -> dict[str, Any]:
        return {"autocommit": True, "prepare_threshold": 0, "application_name": name}

    apg = await asyncpg.create_pool(
        host=args.host,
        port=args.port,
        user=args.user,
        database=dbname,
        min_size=size,
        max_size=size,
        server_settings={"application_name": "asyncpg"},
    )
    ppool = psycopg_pool.AsyncConnectionPool(
        conninfo, min_size=size, max_size=size, kwargs=pg_kwargs("psycopg"), open=False
    )
    ppipe = psycopg_pool.AsyncConnectionPool(
        conninfo, min_size=size, max_size=size, kwargs=pg_kwargs("psycopg+pipe"), open=False
    )
    tpool = psycopg_pool.ConnectionPool(
        conninfo, min_size=size, max_size=size, kwargs=pg_kwargs("psycopg-threads"), open=False
    )
    executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="pg")
    try:
        await ppool.open(wait=True)
        await ppipe.open(wait=True)
        tpool.open(wait=True)
        drivers = []
        for name in args.drivers:
            c = Counters(begin_write="BEGIN ISOLATION LEVEL " + args.write_isolation.replace("-", " ").upper())
            if name == "asyncpg":
                ops = asyncpg_ops(apg, c)
            elif name == "psycopg":
                ops = psycopg_ops(ppool, c, pipe=False)
            elif name == "psycopg+pipe":
                ops = psycopg_ops(ppipe, c, pipe=True)
            else:
                ops = threaded_ops(tpool, c, executor)
            drivers.append(Driver(name, ops, c))
        for d in drivers:  # every connection open, every statement prepared, before measuring
            for op in d.ops.values():
                await measure(op, 64, 0.3, d.counters, [])
            d.backends = [
                r[0]
                for r in admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s", (dbname, d.name)
                )
            ]
        _report_head(args, admin)
        for workload in args.workloads:
            for tasks in (1, 64):
                figures: dict[str, list[Figure]] = {d.name: [] for d in drivers}
                for _ in range(args.rounds):  # interleaved, so every driver sees the same machine
                    for d in drivers:
                        figures[d.name].append(
                            await measure(d.ops[workload], tasks, args.seconds, d.counters, d.backends)
                        )
                for name, runs in figures.items():
                    _report(workload, tasks, name, runs)
        print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        executor.shutdown()
        tpool.close()
        await ppipe.close()
        await ppool.close()
        await apg.close()


def _report_head(args: argparse.Namespace, admin: psycopg.Connection[Any]) -> None:
    row = admin.execute("SHOW server_version").fetchone()
    print(
        f"# asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__} ({psycopg.pq.__impl__} libpq"
        f" {psycopg.pq.version()}), psycopg_pool {psycopg_pool.__version__}; PostgreSQL {row[0] if row else '?'}"
    )
    print(
        f"# pool {args.pool} connections, {args.rounds} interleaved rounds of {args.seconds} s, medians;"
        f" acquire {args.write_isolation};"
        f" {os.cpu_count()} cores, load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"{'workload':8} {'tasks':>5} {'driver':16} {'tx/s':>7} {'p50 µs':>8} {'p99 µs':>8}"
        f" {'client µs/tx':>12} {'backend µs/tx':>13} {'all-pg µs/tx':>12} {'retries %':>9}"
    )


def _report(workload: str, tasks: int, name: str, runs: list[Figure]) -> None:
    def med(attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    print(
        f"{workload:8} {tasks:5} {name:16} {med('rate'):7.0f} {med('p50_us'):8.0f} {med('p99_us'):8.0f}"
        f" {med('client_us'):12.0f} {med('backend_us'):13.0f} {med('server_us'):12.0f} {med('retries'):9.1f}",
        flush=True,
    )


DRIVERS = ["asyncpg", "psycopg", "psycopg+pipe", "psycopg-threads"]
WORKLOADS = ["read1", "read5", "acquire"]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pgdrivers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--pool", type=int, default=10, help="connections per driver's pool")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per figure")
    parser.add_argument("--drivers", nargs="+", choices=DRIVERS, default=DRIVERS)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=WORKLOADS)
    parser.add_argument(
        "--write-isolation",
        choices=["serializable", "read-committed"],
        default="serializable",
        help="acquire's isolation (read-committed: the guarded UPDATE and unique index alone)",
    )
    args = parser.parse_args()
    # psycopg logs a pipeline aborted by a serialization failure; the retry counts it instead.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    # SIGTERM ends the run like Ctrl-C, so the finally below still drops the database.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    dbname = f"tenure_bench_{os.getpid()}"
    admin = psycopg.connect(
        psycopg.conninfo.make_conninfo(host=args.host, port=args.port, user=args.user, dbname="postgres"),
        autocommit=True,
    )
    try:
        admin.execute(f'CREATE DATABASE "{dbname}"')
        asyncio.run(run(args, dbname, admin))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
        print(f"# dropped database {dbname}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, after the database was dropped
        sys.exit(130)
