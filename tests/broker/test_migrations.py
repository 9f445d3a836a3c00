"""Schema upgrades: a database made by the first migration is upgraded in place."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.ids import new_token, token_hash
from broker.store.sqlite import connect, migrate, migrations
from tests.conftest import T0, Broker

# SQLite's migrations (PostgreSQL's: tests/broker/test_postgres.py).
pytestmark = pytest.mark.sqlite_only

LATEST = migrations()[-1][0]


def schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
        return [(t, n) for t, n in rows]
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def seed_v1(path: Path) -> dict[str, str]:
    """An estate with an admin, a custom pool and a purchase, written at schema version 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, "normal")
    try:
        assert migrate(conn, upto=1) == 1
        token = new_token("adm")
        now = int(T0)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO estates VALUES ('est_old', 'Old Estate', ?)", (now,))
        conn.execute(
            "INSERT INTO admins (id, estate_id, name, token_hash, is_primary, created_at) "
            "VALUES ('adm_old', 'est_old', 'Olga', ?, 1, ?)",
            (token_hash(token), now),
        )
        for pid, name, default in (("pool_def", "Default Pool", 1), ("pool_old", "Old Pool", 0)):
            conn.execute(
                "INSERT INTO pools (id, estate_id, name, name_key, is_default, lease_seconds, "
                "created_at) VALUES (?, 'est_old', ?, ?, ?, 3600, ?)",
                (pid, name, name.casefold(), default, now),
            )
        conn.execute(
            "INSERT INTO purchases (id, estate_id, sales_order, licence_type, quantity, "
            "expires_at, status, held_at, created_at) VALUES ('pur_old', 'est_old', 'SO-OLD', "
            "'one-in-one-out', 12, ?, 'valid', NULL, ?)",
            (now + 400 * 86400, now),
        )
        conn.execute("INSERT INTO holdings VALUES ('pool_def', 'pur_old', 7, 0)")
        conn.execute("INSERT INTO holdings VALUES ('pool_old', 'pur_old', 5, 0)")
        conn.execute(
            "INSERT INTO events (estate_id, at, actor_kind, actor_id, actor_name, action, "
            "pool_id, subject_id, details) VALUES ('est_old', ?, 'operator', NULL, 'operator', "
            "'estate.created', NULL, 'est_old', '{}')",
            (now,),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"token": token}


def test_first_migration_stops_where_told(tmp_path: Path) -> None:
    db = tmp_path / "data" / "tenure.db"
    seed_v1(db)
    assert user_version(db) == 1
    assert ("table", "leases") not in schema(db)
    assert LATEST >= 2


async def test_version_1_database_is_upgraded_in_place(
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: Any,
    operator_token: str,
) -> None:
    db = tmp_path / "data" / "tenure.db"
    seeded = seed_v1(db)
    inode = db.stat().st_ino
    client = await aiohttp_client(create_app(config_factory()))
    broker = Broker(client, operator_token, clock)
    assert user_version(db) == LATEST
    assert db.stat().st_ino == inode  # the same file, not a recreated one
    # Data intact and served.
    me = await broker.call("GET", "/v1/me", seeded["token"], status=200)
    assert me["estate_name"] == "Old Estate" and me["admin_id"] == "adm_old"
    pools = await broker.call("GET", "/v1/estates/est_old/pools", seeded["token"], status=200)
    assert [(p["name"], p["allocated"]) for p in pools["items"]] == [("Default Pool", 7), ("Old Pool", 5)]
    events = await broker.call("GET", "/v1/estates/est_old/events", seeded["token"], status=200)
    assert events["items"][0]["action"] == "estate.created"
    # What the later migrations add works on the upgraded database: enrol and lease.
    code = await broker.call("POST", "/v1/estates/est_old/pools/pool_old/auth-codes", seeded["token"], {}, 201)
    srv = await broker.call("POST", "/v1/enroll", None, {"code": code["code"], "name": "h"}, 201)
    await broker.call(
        "POST", "/v1/leases", srv["server_token"], {"encoder": "E1", "licence_type": "one-in-one-out", "count": 5}, 201
    )
    pool = await broker.call("GET", "/v1/estates/est_old/pools/pool_old", seeded["token"], status=200)
    assert (pool["in_use"], pool["available"]) == (5, 0)


async def test_upgraded_schema_equals_a_fresh_one(
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
) -> None:
    old = tmp_path / "data" / "tenure.db"
    seed_v1(old)
    await aiohttp_client(create_app(config_factory()))
    fresh = tmp_path / "fresh" / "tenure.db"
    await aiohttp_client(create_app(config_factory(data_dir=tmp_path / "fresh")))
    assert schema(old) == schema(fresh)
    assert user_version(fresh) == LATEST


def test_migrating_twice_is_a_no_op(tmp_path: Path) -> None:
    db = tmp_path / "data" / "tenure.db"
    seed_v1(db)
    for _ in range(2):
        conn = connect(db, "normal")
        try:
            assert migrate(conn) == LATEST
        finally:
            conn.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM purchases").fetchone() == (1,)
    finally:
        conn.close()


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [v for v, _, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_a_broker_refuses_a_schema_newer_than_it_knows(tmp_path: Path) -> None:
    """A database a newer broker has migrated: the old broker exits 2 naming both
    versions, and leaves the database as it found it (no migration, no new rows)."""
    from tests.broker.test_cli import free_port, run

    data = tmp_path / "data"
    made = run("keys", "rotate", "--data-dir", str(data))  # creates and migrates the database
    assert made.returncode == 0, made.stderr
    db = data / "tenure.db"
    conn = sqlite3.connect(db)
    try:
        conn.execute(f"PRAGMA user_version = {LATEST + 3:d}")
    finally:
        conn.close()
    before = schema(db)
    result = run("serve", "--data-dir", str(data), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"tenure-broker: the database is at schema {LATEST + 3}; this broker knows up to {LATEST}: upgrade the broker"
    )
    assert user_version(db) == LATEST + 3 and schema(db) == before


def test_events_lose_autoincrement_keeping_every_row_and_id(tmp_path: Path) -> None:
    """0011 rebuilds ``events`` with a plain row id (no sqlite_sequence write per event):
    every row, id and hash is kept, the index is back, and new ids follow the largest."""
    db = tmp_path / "data" / "tenure.db"
    seed_v1(db)
    conn = connect(db, "normal")
    try:
        migrate(conn, upto=10)
        conn.execute("BEGIN")
        for i in range(3):
            conn.execute(
                "INSERT INTO events (estate_id, at, actor_kind, actor_name, action, subject_id, details, "
                "prev_hash, hash) VALUES ('est_old', ?, 'operator', 'operator', 'estate.created', 'est_old', "
                "'{}', ?, ?)",
                (int(T0) + i, f"p{i}", f"h{i}"),
            )
        conn.execute("COMMIT")
        columns = "id, estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, subject_id, details, "
        columns += "prev_hash, hash"
        before = conn.execute(f"SELECT {columns} FROM events ORDER BY id").fetchall()
        assert "AUTOINCREMENT" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()["sql"]
        assert migrate(conn) == LATEST
        after = conn.execute(f"SELECT {columns} FROM events ORDER BY id").fetchall()
        assert after == before and len(after) == 4
        table = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()["sql"]
        assert "AUTOINCREMENT" not in table and "id          INTEGER PRIMARY KEY," in table
        assert conn.execute("SELECT name FROM sqlite_sequence WHERE name = 'events'").fetchall() == []
        index = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events_estate'").fetchone()["sql"]
        assert index == "CREATE INDEX events_estate ON events(estate_id, id)"
        conn.execute(
            "INSERT INTO events (estate_id, at, actor_kind, action, details) "
            "VALUES ('est_old', 0, 'system', 'lease.lapsed', '{}')"
        )
        assert conn.execute("SELECT MAX(id) AS top FROM events").fetchone()["top"] == after[-1]["id"] + 1
    finally:
        conn.close()
