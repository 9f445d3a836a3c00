"""WAL checkpoints run beside the writer, so no COMMIT pays for one."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import broker.store.sqlite
from broker import estates
from broker.principal import Principal
from broker.store.sqlite import SqliteStore

OPERATOR = Principal(kind="operator", token_hash=b"")


async def test_committed_rows_reach_the_database_file_without_the_writer(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "tenure.db")
    try:
        writer = store._conn
        assert writer is not None
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for i in range(50):
            await store.write(lambda tx, i=i: estates.create(tx, 0, OPERATOR, f"E{i}", "A", 3600))
        for _ in range(200):  # up to 10 s: two checkpoint intervals, with room for load
            if store.stats.checkpoints >= 2:
                break
            await asyncio.sleep(0.05)
        assert store.stats.checkpoints >= 2
        # The database file alone, without its WAL, already holds every committed estate.
        copy = tmp_path / "copy.db"
        shutil.copyfile(tmp_path / "tenure.db", copy)
        conn = sqlite3.connect(copy)
        try:
            assert conn.execute("SELECT COUNT(*) FROM estates").fetchone()[0] == 50
        finally:
            conn.close()
    finally:
        await store.close()


async def test_what_a_batchs_callers_leave_to_the_end_of_their_turn_runs_before_the_next_batch(
    tmp_path: Path,
) -> None:
    # The writer of ``serve --workers`` sends a batch's answers in one write at the end of
    # the loop's turn in which its callers resumed: that must come before the next batch
    # takes the loop, or the answers wait behind its jobs.
    store = await SqliteStore.open(tmp_path / "tenure.db")
    seen: list[tuple[str, int]] = []

    async def caller(i: int) -> None:
        await store.write(lambda tx: job(tx, i))
        asyncio.get_running_loop().call_soon(seen.append, ("sent", i))

    def job(tx: object, i: int) -> None:
        seen.append(("ran", i))
        if i == 4:  # the second batch: queued while the first one commits
            later.extend(asyncio.ensure_future(caller(n)) for n in range(5, 10))

    later: list[asyncio.Future[None]] = []
    try:
        await asyncio.gather(*(caller(i) for i in range(5)))
        await asyncio.gather(*later)
        assert len(later) == 5
        await asyncio.sleep(0)
        first_of_second_batch = seen.index(("ran", 5))
        assert all(seen.index(("sent", i)) < first_of_second_batch for i in range(5)), seen
    finally:
        await store.close()


def _wal_frames(db: Path) -> int:
    """How many frames the WAL file has room for: it is written again from its beginning
    when SQLite restarts it, and only ever grows in length otherwise."""
    size = db.with_name(db.name + "-wal").stat().st_size
    return max(0, (size - 32) // (4096 + 24))


async def test_the_wal_starts_again_from_its_beginning_under_writes_that_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writers that send their next write the moment the last one is answered: the flusher
    # never idles, so a checkpoint beside it never finds the WAL copied whole when a batch
    # begins. The WAL must still be written again from its beginning, not grow for ever.
    monkeypatch.setattr(broker.store.sqlite, "CHECKPOINT_SECONDS", 0.01)
    monkeypatch.setattr(broker.store.sqlite, "WAL_RESTART_FRAMES", 64)
    db = tmp_path / "tenure.db"
    store = await SqliteStore.open(db)
    created = 0

    async def writer(n: int) -> None:
        nonlocal created
        for i in range(150):
            await store.write(lambda tx, i=i: estates.create(tx, 0, OPERATOR, f"E{n}-{i}", "A", 3600))
            created += 1

    try:
        await asyncio.gather(*(writer(n) for n in range(16)))
        assert created == 16 * 150
        assert store.stats.commits < created  # they did share batches: the flusher was busy
        frames = _wal_frames(db)
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM estates").fetchone()[0] == created
    finally:
        conn.close()
    assert frames < 3000, frames  # 12,000 and growing when it never starts again


def _temp_files() -> list[str]:
    """SQLite's own temporary files this process holds open (made, then unlinked at once)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "etilqs_" in target:
            found.append(target)
    return found


async def test_a_batch_keeps_its_jobs_savepoint_journals_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every job of a batch runs in a SAVEPOINT whose journal keeps the earlier contents of
    # the pages the job changes. Past 64 KB SQLite moved it into a file of its own (in
    # /var/tmp, unlinked at once, held open until the COMMIT), made anew by every batch of
    # acquires: CPU the writer spent on every commit, and a failure wherever no temporary
    # directory can be written.
    # However long a job takes on a busy machine, the three stay in one batch (a batch
    # otherwise hands the rest to the next after BATCH_LOOP_SECONDS on the loop).
    monkeypatch.setattr(broker.store.sqlite, "BATCH_LOOP_SECONDS", 60.0)
    db = tmp_path / "tenure.db"
    store = await SqliteStore.open(db)
    try:
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE scratch (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        conn.executemany("INSERT INTO scratch VALUES (?, zeroblob(2000))", [(i,) for i in range(128)])
        conn.commit()
        conn.close()
        seen: list[list[str]] = []
        runs = iter(range(1, 100))

        def touch_every_row(tx: Any) -> None:
            # 128 rows of 2 KB on some 64 pages, each job writing other bytes (SQLite does
            # not write a row back unchanged): ~256 KB of savepoint journal per job
            tx._conn.execute("UPDATE scratch SET v = zeroblob(2000 + ?)", (next(runs),))

        def look(_tx: Any) -> None:
            seen.append(_temp_files())

        writes = [store.write(touch_every_row), store.write(touch_every_row), store.write(look)]
        await asyncio.gather(*writes)
        assert store.stats.commits == 1  # one batch
        assert seen == [[]]
    finally:
        await store.close()
