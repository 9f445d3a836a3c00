"""Storage faults: the database cannot be written for a while.

For each fault the broker must answer ``503 storage_unavailable`` (nothing changed),
keep serving reads, corrupt nothing, and recover by itself once the fault is gone:
no restart, no operator action. The faults are real ones, made with root's tools:

- read-only: ``chattr +i`` on the database and its WAL. (A read-only remount of the
  directory is refused by Linux with EBUSY while the broker holds the files open for
  writing, and root ignores permission bits, so the immutable flag is the way to make
  a live database unwritable.)
- disk full: the data directory on a 4 MiB tmpfs, filled to the last byte.
- locked: another process holds ``BEGIN EXCLUSIVE`` on the database.

Each test skips, saying why, where the sandbox does not allow the tool it needs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from tests.conftest import Broker
from tests.reliability import kit
from tests.reliability.invariants import check_books, integrity_ok, snapshot

# Faults of the SQLite file and its directory; PostgreSQL's faults (the server down,
# restarting, connections killed) have tests of their own.
pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]


async def sh(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(subprocess.run, list(args), capture_output=True, check=False)


async def start(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    data_dir: Path,
) -> Broker:
    client = await aiohttp_client(create_app(config_factory(data_dir=data_dir, sqlite_synchronous="full")))
    return Broker(client, operator_token, clock)


async def stocked(broker: Broker) -> tuple[kit.Estate, dict[str, Any], dict[str, Any]]:
    est = await kit.estate(broker)
    bought = await broker.purchase(est.id, "SO-1", quantity=20)
    host = await kit.enrol(broker, est, est.default_pool)
    lease = await kit.acquire(broker, host["server_token"], "ENC-1", 2)
    assert lease.status == 201
    return est, host, lease.body | {"purchase_id": bought["id"]}


async def writes_fail(broker: Broker, est: kit.Estate, host: dict[str, Any], lease: dict[str, Any], db: Path) -> None:
    """Every kind of write answers 503 storage_unavailable; reads still answer; nothing moved."""
    before = snapshot(db)
    attempts = [
        kit.acquire(broker, host["server_token"], "ENC-2", 1),
        kit.acquire(broker, host["server_token"], "ENC-1", 5),
        kit.call(broker, "POST", f"/v1/leases/{lease['id']}/renew", host["server_token"], {}),
        kit.call(broker, "POST", f"{est.base}/pools", est.admin, {"name": "During the fault"}),
        kit.call(
            broker,
            "POST",
            f"{est.base}/purchases",
            broker.operator,
            {"sales_order": "SO-2", "licence_type": kit.ONE, "quantity": 3, "expires_at": "2030-01-01T00:00:00Z"},
        ),
    ]
    for answer in await asyncio.gather(*attempts):
        assert answer.status == 503, (answer.status, answer.body)
        assert answer.body["code"] == "storage_unavailable", answer.body
        assert "Traceback" not in str(answer.body)
    pools = await kit.call(broker, "GET", f"{est.base}/pools", est.admin)
    assert pools.status == 200 and pools.body["items"][0]["in_use"] == 2
    await not_ready(broker)
    assert snapshot(db) == before, "a refused write changed the database"


async def not_ready(broker: Broker, probe: bool = False) -> None:
    """Readiness covers writes: ``/healthz`` is 503 while writes fail. With ``probe``, also
    once no write has been tried for over a second, when healthz must write to know."""
    for wait in (0.0, 1.1) if probe else (0.0,):
        await asyncio.sleep(wait)
        health = await kit.call(broker, "GET", "/healthz")
        assert health.status == 503 and health.body["code"] == "storage_unavailable", health.body


async def writes_work_again(
    broker: Broker, est: kit.Estate, host: dict[str, Any], lease: dict[str, Any], db: Path
) -> None:
    """Recovered by itself: the same requests now succeed, and the books are sound."""
    health = await kit.call(broker, "GET", "/healthz")
    assert health.status == 200 and health.body == {"status": "ok"}, health.body
    renewed = await kit.call(broker, "POST", f"/v1/leases/{lease['id']}/renew", host["server_token"], {})
    assert renewed.status == 200, renewed.body
    grown = await kit.acquire(broker, host["server_token"], "ENC-1", 5)
    assert grown.status == 200 and grown.body["count"] == 5, grown.body
    other = await kit.acquire(broker, host["server_token"], "ENC-2", 1)
    assert other.status == 201, other.body
    made = await kit.call(broker, "POST", f"{est.base}/pools", est.admin, {"name": "After the fault"})
    assert made.status == 201, made.body
    view = await broker.call("GET", f"{est.base}/pools/{est.default_pool}", est.admin, status=200)
    assert view["in_use"] == 6
    check_books(db)
    integrity_ok(db)


async def test_database_made_read_only(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    broker = await start(aiohttp_client, config_factory, clock, operator_token, data_dir)
    est, host, lease = await stocked(broker)
    db = data_dir / "tenure.db"
    files = [str(p) for p in (db, data_dir / "tenure.db-wal") if p.exists()]
    made = await sh("chattr", "+i", *files)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {made.stderr.decode().strip()}")
    try:
        probe = await asyncio.to_thread(_can_append, data_dir / "tenure.db-wal")
        assert not probe, "the immutable flag did not make the WAL unwritable"
        await writes_fail(broker, est, host, lease, db)
        await not_ready(broker, probe=True)
    finally:
        await sh("chattr", "-i", *files)
    await writes_work_again(broker, est, host, lease, db)


def _can_append(path: Path) -> bool:
    try:
        with path.open("ab") as f:
            f.write(b"")
        return True
    except OSError:
        return False


@pytest.fixture
async def small_fs(tmp_path: Path) -> AsyncIterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    made = await sh("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount))
    if made.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs CAP_SYS_ADMIN): {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        await sh("umount", "-l", str(mount))


async def test_disk_full(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    small_fs: Path,
) -> None:
    data_dir = small_fs / "data"
    broker = await start(aiohttp_client, config_factory, clock, operator_token, data_dir)
    est, host, lease = await stocked(broker)
    db = data_dir / "tenure.db"
    filler = small_fs / "filler"
    await asyncio.to_thread(_fill, filler)
    try:
        await writes_fail(broker, est, host, lease, db)
        # A fault that lasts: still refused, never half-written.
        await writes_fail(broker, est, host, lease, db)
    finally:
        filler.unlink()
    await writes_work_again(broker, est, host, lease, db)


def _fill(path: Path) -> None:
    """Write until the filesystem says ENOSPC, down to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


async def test_database_locked_by_another_process(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    broker = await start(aiohttp_client, config_factory, clock, operator_token, data_dir)
    est, host, lease = await stocked(broker)
    db = data_dir / "tenure.db"
    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(db), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert locker.stdout is not None and locker.stdin is not None
    try:
        line = await asyncio.wait_for(locker.stdout.readline(), 10)
        assert line.strip() == b"locked"
        await writes_fail(broker, est, host, lease, db)
        await not_ready(broker, probe=True)
    finally:
        locker.stdin.write(b"\n")
        await locker.stdin.drain()
        await asyncio.wait_for(locker.wait(), 10)
    await writes_work_again(broker, est, host, lease, db)


async def test_started_while_read_only_then_recovers(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    tmp_path: Path,
) -> None:
    """Regression: a broker (re)started while its database was unwritable got a read-only
    connection from SQLite and kept it, answering 503 long after the fault was gone."""
    data_dir = tmp_path / "data"
    first = await start(aiohttp_client, config_factory, clock, operator_token, data_dir)
    est, host, lease = await stocked(first)
    await first.client.close()  # a clean stop: the WAL is checkpointed away
    db = data_dir / "tenure.db"
    files = [str(p) for p in data_dir.glob("tenure.db*")]
    made = await sh("chattr", "+i", *files)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {made.stderr.decode().strip()}")
    try:
        broker = await start(aiohttp_client, config_factory, clock, operator_token, data_dir)
        await not_ready(broker, probe=True)  # before any request has tried to write
        await writes_fail(broker, est, host, lease, db)
    finally:
        await sh("chattr", "-i", *files)
    await writes_work_again(broker, est, host, lease, db)
