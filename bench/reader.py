"""``python -m bench.reader``: the store's reader thread against aiosqlite, for the same reads.

The broker's reads run as one function of a ``Tx`` on the store's reader thread: one
hand-off from the event loop per read, however many queries it makes. aiosqlite gives
each awaited call its own hand-off to its connection's thread. This measures both on the
same database and the same named queries, for a read of 1 query (a token lookup) and of
5 (a pool view), one caller at a time (latency) and 64 at once (throughput), interleaved
so that both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite

from broker.store.base import Tx
from broker.store.sqlite import SqliteStore, load_queries

QUERIES = load_queries()
# A pool view: the pool, its holdings, the estate's pools, and the dead and revoked seats.
POOL_VIEW = ["pool_by_id", "holdings_of_pool", "pools_of_estate", "dead_seats_of_estate", "revoked_unexpired_of_estate"]
TOKEN_LOOKUP = ["server_by_token"]
PARAMS: dict[str, Any] = {"pool_id": "p1", "estate_id": "e1", "now": 0, "digest": b"x" * 32, "token_hash": b"x" * 32}


def _params(name: str) -> dict[str, Any]:
    sql = QUERIES[name]
    return {k: v for k, v in PARAMS.items() if f":{k}" in sql}


def _thread_read(store: SqliteStore, names: list[str]) -> Callable[[], Awaitable[object]]:
    def fn(tx: Tx) -> object:
        return [tx.all(name, **_params(name)) for name in names]

    return lambda: store.read(fn)


def _aiosqlite_read(conn: aiosqlite.Connection, names: list[str]) -> Callable[[], Awaitable[object]]:
    async def read() -> object:
        await conn.execute("BEGIN")
        try:
            return [await conn.execute_fetchall(QUERIES[name], _params(name)) for name in names]
        finally:
            await conn.execute("ROLLBACK")

    lock = asyncio.Lock()  # one connection: one read transaction at a time

    async def serial() -> object:
        async with lock:
            return await read()

    return serial


async def _measure(read: Callable[[], Awaitable[object]], callers: int, seconds: float) -> tuple[float, float]:
    """(reads per second, median latency in µs) with ``callers`` concurrent readers."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await read()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - t0
    return len(latencies) / elapsed, statistics.median(latencies) * 1e6


async def main(seconds: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = await SqliteStore.open(path)
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            for label, names in (("1 query", TOKEN_LOOKUP), ("5 queries", POOL_VIEW)):
                for callers in (1, 64):
                    rows: dict[str, list[tuple[float, float]]] = {"reader thread": [], "aiosqlite": []}
                    for _ in range(rounds):  # interleaved, so both see the same machine
                        rows["reader thread"].append(await _measure(_thread_read(store, names), callers, seconds))
                        rows["aiosqlite"].append(await _measure(_aiosqlite_read(conn, names), callers, seconds))
                    for how, runs in rows.items():
                        rate = statistics.median(r for r, _ in runs)
                        p50 = statistics.median(p for _, p in runs)
                        print(f"{label:10} {callers:3} caller(s)  {how:13}  {rate:8.0f} reads/s  p50 {p50:7.0f} µs")
        finally:
            await conn.close()
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.reader", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per figure")
    args = parser.parse_args()
    assert sqlite3.sqlite_version_info >= (3, 35)
    asyncio.run(main(args.seconds, args.rounds))
