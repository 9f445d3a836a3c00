"""The data directory is the operator's alone: 0700, and the database files 0600.

Also for a directory an older broker (or a careless copy) left at 0755 with 0644 files:
the broker tightens them at start and says so in its log.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app

# the modes of the SQLite database files in the data directory.
pytestmark = pytest.mark.sqlite_only

DB_FILES = ("tenure.db", "tenure.db-wal", "tenure.db-shm")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the common default: new files 0644, directories 0755
    try:
        yield
    finally:
        os.umask(old)


async def _start(aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], config_factory: Any) -> Any:
    client = await aiohttp_client(create_app(config_factory()))
    assert (await client.get("/healthz")).status == 200
    return client


@pytest.mark.usefixtures("loose_umask")
async def test_a_new_data_directory_is_private(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], config_factory: Any
) -> None:
    client = await _start(aiohttp_client, config_factory)
    data = tmp_path / "data"
    assert mode(data) == 0o700
    for name in DB_FILES:
        assert mode(data / name) == 0o600, name
    await client.close()


@pytest.mark.usefixtures("loose_umask")
async def test_an_existing_loose_directory_is_tightened_with_a_warning(
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    # A database left in WAL mode with its -wal and -shm files, all 0644 (as SQLite makes them).
    conn = sqlite3.connect(data / "tenure.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE scratch (x)")
    conn.commit()
    keep_open = sqlite3.connect(data / "tenure.db")
    keep_open.execute("SELECT * FROM scratch").fetchall()
    for name in DB_FILES:
        os.chmod(data / name, 0o644)
    conn.close()
    try:
        with caplog.at_level(logging.WARNING, logger="tenure.broker"):
            client = await _start(aiohttp_client, config_factory)
    finally:
        keep_open.close()
    assert mode(data) == 0o700
    for name in DB_FILES:
        assert mode(data / name) == 0o600, name
    warned = [r.getMessage() for r in caplog.records if "was mode" in r.getMessage()]
    assert any(str(data) in m and "0755" in m for m in warned), warned
    assert any("tenure.db was mode 0644" in m for m in warned), warned
    await client.close()
