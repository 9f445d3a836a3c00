"""``python -m bench.chain [--events N]``: what the audit chain costs.

On a real ``SqliteStore`` in a temporary directory (``synchronous=normal``), with one
estate of N events (10 estates sharing 2,000 events a round for the write figure, best of 3):

- an event written with its chain link (``audit.record``: one insert that reads the
  estate's last hash and hashes the event), 100 events a write (the insert without the
  link it was once compared with is no query of the broker's any more);
- ``tenure-broker check``'s whole read (``books.check``) over N events;
- one slice of ``GET …/events/chain`` (``audit.walk``, 1,000 events);
- chaining N events of an older database at start (``audit.chain_backlog``).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from broker import audit, books
from broker.config import load
from broker.store import open_store
from broker.store.base import Store, Tx

BATCH = 100


def _chained(tx: Tx, estate_id: str, i: int) -> None:
    audit.record(
        tx,
        1_800_000_000 + i,
        None,
        estate_id,
        audit.Action.POOL_UPDATED,
        pool_id="pool_1",
        subject_id="pool_1",
        before={"name": f"P{i}"},
        after={"name": f"P{i + 1}"},
    )


async def _write(store: Store, n: int, estates: list[str]) -> float:
    """Seconds per event, writing ``n`` events round the estates, ``BATCH`` a write."""
    started = time.perf_counter()
    for start in range(0, n, BATCH):

        def job(tx: Tx, start: int = start) -> None:
            for i in range(start, min(start + BATCH, n)):
                _chained(tx, estates[i % len(estates)], i)

        await store.write(job)
    return (time.perf_counter() - started) / n


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = load(None, env={}, data_dir=Path(tmp), sqlite_synchronous="normal")
        store = await open_store(config)
        try:
            linked = [f"est_chained{i}" for i in range(10)]
            for e in linked:
                await store.write(lambda tx, e=e: tx.run("estate_insert", id=e, name=e, now=0))
            chained = [await _write(store, 2000, linked) for _ in range(3)]
            print(f"write, per event, with its chain link: {min(chained) * 1e6:.1f} µs (best of 3)")

            # One estate of n events, for the reads.
            one = "est_one"
            await store.write(lambda tx: tx.run("estate_insert", id=one, name=one, now=0))
            await _write(store, n, [one])
            started = time.perf_counter()
            report = await store.read(lambda tx: books.check(tx, time.time()))
            took = time.perf_counter() - started
            print(f"check: {report.events} events in {took:.2f} s ({report.events / took:,.0f} events/s)")
            started = time.perf_counter()
            walked = await store.read(lambda tx: audit.walk(tx, one, limit=1_000))
            print(
                f"GET …/events/chain slice of {walked.checked} events: {(time.perf_counter() - started) * 1000:.0f} ms"
            )
        finally:
            await store.close()
        # Chaining at start: the same events with their links removed, as a schema-5 database has them.
        conn = sqlite3.connect(Path(tmp) / "tenure.db")
        conn.execute("UPDATE events SET hash = NULL, prev_hash = NULL")
        conn.commit()
        total = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        conn.close()
        store = await open_store(config)
        try:
            started = time.perf_counter()
            while await store.write(audit.chain_backlog):
                pass
            took = time.perf_counter() - started
            print(f"chaining an older database at start: {total} events in {took:.2f} s ({total / took:,.0f} events/s)")
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events in the estate read back (default 100,000)")
    asyncio.run(main(parser.parse_args().events))
