"""WAL checkpoints run beside the writer, so no COMMIT pays for one."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

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
