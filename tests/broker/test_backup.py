"""``tenure-broker backup`` and ``restore``: consistent online copies that a new broker serves."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker import backup, secretfiles, secretkey
from broker.app import create_app
from broker.cli import main
from broker.secretkey import SecretKeyError
from shared import jws
from tests.broker.estate_kit import base, enroll, estate, lease
from tests.conftest import Broker

# backup and restore copy the SQLite file (PostgreSQL: pg_dump, docs/operations.md).
pytestmark = pytest.mark.sqlite_only


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


async def start_up(config: Any) -> None:
    """Start the app's services as ``serve`` does, and stop them again."""
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    await runner.cleanup()


async def test_online_backup_is_consistent_private_and_self_contained(
    broker: Broker, config_factory: Callable[..., Any], tmp_path: Path
) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, quantity=500)
    server = await enroll(broker, est, est.default_pool)

    async def keep_leasing() -> None:
        for i in range(60):
            await lease(broker, server["server_token"], f"ENC-{i}", 2)

    writer = asyncio.create_task(keep_leasing())
    await asyncio.sleep(0.05)
    target = tmp_path / "copy.db"
    copied = await asyncio.to_thread(backup.backup, config_factory().db_path, target)
    await writer

    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not target.with_name("copy.db-wal").exists()
    assert rows(target, "PRAGMA journal_mode") == [("delete",)]
    # One snapshot: however far the writer had got, every copied lease's seats are copied too.
    leased = rows(target, "SELECT COUNT(*), COALESCE(SUM(count), 0) FROM leases WHERE state = 'active'")[0]
    seats = rows(
        target,
        "SELECT COALESCE(SUM(s.count), 0) FROM lease_seats s JOIN leases l "
        "ON l.id = s.lease_id WHERE l.state = 'active'",
    )[0][0]
    assert copied.live_leases == leased[0] and leased[1] == seats == 2 * leased[0]
    assert copied.estates == 1


async def test_a_restored_data_directory_serves_the_same_books_and_tokens(
    broker: Broker,
    config_factory: Callable[..., Any],
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, quantity=10)
    server = await enroll(broker, est, est.default_pool)
    first = await lease(broker, server["server_token"], "ENC-1", 3)
    code = await broker.call("POST", f"{base(est)}/pools/{est.default_pool}/auth-codes", est.admin, {}, 201)
    keys_before = await broker.call("GET", "/v1/keys", status=200)
    target = tmp_path / "copy.db"
    await asyncio.to_thread(backup.backup, config_factory().db_path, target)
    # The keys came along, sealed: the backup holds their rows and no secret key.
    assert [r[0] for r in rows(target, "SELECT purpose FROM key_material ORDER BY purpose")] == ["code", "signing"]

    new_dir = tmp_path / "restored"
    restored = await asyncio.to_thread(backup.restore, target, config_factory(data_dir=new_dir).db_path)
    assert restored.live_leases == 1
    assert stat.S_IMODE(new_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in new_dir.iterdir()) == ["tenure.db"]

    # Without the deployment's secret key the restored broker refuses to start, rather
    # than making new keys under which the old tokens and codes would fail.
    with pytest.raises(SecretKeyError, match="copy the old data directory's secret-key"):
        await start_up(config_factory(data_dir=new_dir))
    with pytest.raises(SecretKeyError, match="does not open the"):
        await start_up(config_factory(data_dir=new_dir, secret_key=secretkey.generate()))
    assert sorted(p.name for p in new_dir.iterdir() if not p.name.startswith("tenure.db")) == []

    shutil.copy(config_factory().data_dir / "secret-key", new_dir / "secret-key")
    # Nor a new operator token over a database with estates: its operator holds the old one.
    with pytest.raises(secretfiles.OperatorTokenMissing, match="holds 1 estate, and this broker has no operator"):
        await start_up(config_factory(data_dir=new_dir, operator_token=None))
    assert not (new_dir / "operator-token").exists()
    client = await aiohttp_client(create_app(config_factory(data_dir=new_dir)))
    again = Broker(client, broker.operator, broker.clock)
    pools = await again.call("GET", f"{base(est)}/pools", est.admin, status=200)
    assert [(p["allocated"], p["in_use"]) for p in pools["items"]] == [(10, 3)]
    renewed = await lease(again, server["server_token"], "ENC-1", 3, status=200)
    assert renewed["count"] == 3
    # The same keys: old lease tokens verify, new ones are signed by the same key, and a
    # code made before the backup still redeems.
    assert await again.call("GET", "/v1/keys", status=200) == keys_before
    published = jws.keys_from_jwks(keys_before)
    assert jws.verify(first["token"], published, now=broker.clock.now())["lid"] == first["id"]
    assert jws.unverified_header(renewed["token"])["kid"] == jws.unverified_header(first["token"])["kid"]
    await again.call("POST", "/v1/enroll", None, {"code": code["code"], "name": "enc-host-2"}, 201)


async def test_backup_never_overwrites_and_restore_refuses_what_it_cannot_trust(
    broker: Broker, config_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await estate(broker)
    db = config_factory().db_path
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"precious")
    with pytest.raises(backup.BackupError, match="exists already"):
        await asyncio.to_thread(backup.backup, db, taken)
    assert taken.read_bytes() == b"precious"

    with pytest.raises(backup.BackupError, match="no broker database"):
        await asyncio.to_thread(backup.backup, tmp_path / "nowhere" / "tenure.db", tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()

    good = tmp_path / "good.db"
    await asyncio.to_thread(backup.backup, db, good)
    occupied = config_factory().data_dir  # the live broker's own directory
    before = db.read_bytes()
    with pytest.raises(backup.BackupError, match="not empty"):
        await asyncio.to_thread(backup.restore, good, db)
    assert db.read_bytes() == before

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(backup.BackupError, match="not a Tenure database"):
        await asyncio.to_thread(backup.restore, foreign, tmp_path / "fresh" / "tenure.db")
    assert not (tmp_path / "fresh").exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(backup.BackupError, match="not a Tenure database"):
        await asyncio.to_thread(backup.restore, garbage, tmp_path / "fresh" / "tenure.db")
    assert occupied.exists()


def test_the_command_line_says_what_it_did_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()  # a data directory whose broker never ran: no database yet
    assert main(["backup", str(tmp_path / "b.db"), "--data-dir", str(data)]) == 1
    assert "no broker database" in capsys.readouterr().err

    from broker.store.sqlite import connect, migrate

    conn = connect(data / "tenure.db")
    migrate(conn)
    conn.close()
    assert main(["backup", str(tmp_path / "b.db"), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "Backed up 0 estates" in out and "keep those apart" in out
    assert main(["restore", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "new")]) == 0
    assert "Restored 0 estates" in capsys.readouterr().out
    assert main(["restore", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "new")]) == 1
    assert "not empty" in capsys.readouterr().err
