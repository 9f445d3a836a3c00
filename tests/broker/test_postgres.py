"""The PostgreSQL store's own duties: migrations under a lock, serialization failures
retried, a lost connection survived, the settings that select it (docs/design.md, Storage).

Everything else it shares with SQLite is tested on both stores by the rest of the suite.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from broker import estates, leases, purchases
from broker.config import ConfigError, load
from broker.errors import PoolExhausted, StorageUnavailable
from broker.principal import Principal
from broker.store.base import SchemaTooNew, Tx
from broker.store.postgres import PostgresStore, migrations, to_pyformat
from tests.conftest import T0
from tests.postgres import TEST_SECRET_KEY, PostgresServer

OPERATOR = Principal(kind="operator", token_hash=b"")
YEAR = 365 * 86400
LATEST = migrations()[-1][0]


def _versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM tenure_schema ORDER BY version")]


async def test_replicas_starting_together_migrate_an_empty_database_once(empty_database: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(empty_database, 2) for _ in range(4)))
    try:
        assert _versions(empty_database) == [v for v, _, _ in migrations()]
        counts = await asyncio.gather(*(s.read(lambda tx: tx.scalar("sessions_count")) for s in stores))
        assert counts == [0, 0, 0, 0]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_schema_newer_than_the_broker_is_refused(empty_database: str) -> None:
    store = await PostgresStore.open(empty_database, 1)
    await store.close()
    with psycopg.connect(empty_database) as conn:
        conn.execute("INSERT INTO tenure_schema (version) VALUES (%s)", (LATEST + 3,))
    with pytest.raises(SchemaTooNew, match=f"schema {LATEST + 3}; this broker knows up to {LATEST}"):
        await PostgresStore.open(empty_database, 1)


async def test_an_unreachable_server_is_storage_unavailable() -> None:
    # Port 1 on loopback: nothing listens there.
    with pytest.raises(StorageUnavailable) as refused:
        await PostgresStore.open("postgresql://tenure:hunter2@127.0.0.1:1/x", 1, 1.0)
    assert "cannot open the database postgresql://tenure:***@127.0.0.1:1/x" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_queries_become_psycopg_style_without_touching_casts_or_comments() -> None:
    sql = "-- a :comment\nSELECT x::jsonb ->> 'a' FROM t WHERE a = :a AND b LIKE :b || '.%'"
    assert to_pyformat(sql) == "SELECT x::jsonb ->> 'a' FROM t WHERE a = %(a)s AND b LIKE %(b)s || '.%%'"


# -- isolation across replicas -----------------------------------------------------


def _stock(tx: Tx, seats: int) -> tuple[dict[str, Any], list[Principal]]:
    est = estates.create(tx, T0, OPERATOR, "Acme", "Alice", 3600)
    purchases.record(
        tx,
        T0,
        OPERATOR,
        est["id"],
        sales_order="SO-1",
        licence_type="one-in-one-out",
        quantity=seats,
        expires_at=int(T0) + YEAR,
    )
    servers = []
    for i in range(4):
        server = Principal(
            kind="server",
            token_hash=b"",
            estate_id=est["id"],
            server_id=tx.new_id("srv"),
            name=f"enc-{i}",
            pool_id=est["default_pool_id"],
        )
        tx.run(
            "server_insert",
            id=server.server_id,
            estate_id=est["id"],
            pool_id=est["default_pool_id"],
            name=server.name,
            kind="server",
            token_hash=bytes([i]) * 32,
            now=int(T0),
        )
        servers.append(server)
    return est, servers


@pytest.mark.parametrize("lanes", [False, True], ids=["serializable-retries", "lanes"])
async def test_a_seat_race_across_replicas_grants_exactly_the_seats(pg_database: str, lanes: bool) -> None:
    """Three stores (three replicas) race 60 one-seat acquires for 10 seats: exactly 10
    are granted, with or without lanes, and none is refused for want of the database."""
    replicas = [await PostgresStore.open(pg_database, 4) for _ in range(3)]
    try:
        est, servers = await replicas[0].write(lambda tx: _stock(tx, 10))

        async def acquire(i: int) -> bool:
            server = servers[i % len(servers)]
            try:
                await replicas[i % 3].write(
                    lambda tx: leases.acquire(tx, T0, server, f"ENC-{i}", "one-in-one-out", 1),
                    lane=est["id"] if lanes else None,
                )
            except PoolExhausted:
                return False
            return True

        granted = await asyncio.gather(*(acquire(i) for i in range(60)))
        assert sum(granted) == 10
        held = await replicas[1].read(lambda tx: tx.all("holdings_of_pool", pool_id=est["default_pool_id"]))
        assert [(h["allocated"], h["leased"]) for h in held] == [(10, 10)]
        assert sum(r.stats.failed_commits for r in replicas) == 0  # none refused for want of the database
        if not lanes:  # they collided, and the collisions were retried rather than refused
            assert sum(r.stats.retries for r in replicas) > 0
    finally:
        for replica in replicas:
            await replica.close()


async def test_connections_killed_under_the_broker_are_replaced_without_a_failed_request(
    pg_database: str, postgres_server: PostgresServer
) -> None:
    store = await PostgresStore.open(pg_database, 3)
    try:
        est, _ = await store.write(lambda tx: _stock(tx, 5))
        await asyncio.gather(*(store.read(lambda tx: tx.one("estate_by_id", estate_id=est["id"])) for _ in range(6)))
        killed = postgres_server.terminate(pg_database)
        assert killed >= 1
        # Reads, and writes broken before COMMIT, are run again on a fresh connection.
        row = await store.read(lambda tx: tx.one("estate_by_id", estate_id=est["id"]))
        assert row is not None
        postgres_server.terminate(pg_database)
        for _ in range(5):
            await store.write(lambda tx: tx.run("health_probe", now=1))
        await store.ping()
        row = await store.read(lambda tx: tx.one("estate_by_id", estate_id=est["id"]))
        assert row is not None and row["name"] == "Acme"
    finally:
        await store.close()


# -- settings ------------------------------------------------------------------------


def test_the_database_setting_and_its_environment_names() -> None:
    url = "postgresql://tenure@db.internal:5432/tenure?sslmode=require"
    env = {"TENURE_DATABASE_URL": url, "TENURE_SECRET_KEY": TEST_SECRET_KEY}
    config = load(None, env=env)
    assert config.database == url
    assert "db.internal" not in repr(config)  # it may hold a password: never logged
    assert load(None, env={"TENURE_DATABASE": url, "TENURE_SECRET_KEY": TEST_SECRET_KEY}).database == url
    flags = load(None, env=env, flags={"database": "postgres://h/other"})
    assert flags.database == "postgres://h/other"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TENURE_DATABASE_URL": "mysql://h/db"}, "setting 'database' must be a PostgreSQL URL"),
        ({"TENURE_DATABASE_URL": "postgresql://h"}, "setting 'database' must be a PostgreSQL URL"),
        ({"TENURE_DATABASE_URL": "postgresql://h/db"}, "setting 'secret_key' \\(or 'secret_key_file'\\) is required"),
    ],
)
def test_a_bad_database_setting_stops_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, env=env)


async def test_one_encoder_raced_across_replicas_gets_one_lease_and_no_conflict(pg_database: str) -> None:
    """Twenty acquires for one encoder, without lanes, on three replicas: the answers are
    those of some serial order (one new lease, then nineteen of the same), not 409s from
    the unique index that settled the race."""
    replicas = [await PostgresStore.open(pg_database, 4) for _ in range(3)]
    try:
        est, servers = await replicas[0].write(lambda tx: _stock(tx, 10))
        server = servers[0]
        grants = await asyncio.gather(
            *(
                replicas[i % 3].write(lambda tx: leases.acquire(tx, T0, server, "ENC-1", "one-in-one-out", 4))
                for i in range(20)
            )
        )
        assert sorted(g.created for g in grants if g is not None) == [False] * 19 + [True]
        assert len({g.lease["id"] for g in grants if g is not None}) == 1
        held = await replicas[2].read(lambda tx: tx.all("holdings_of_pool", pool_id=est["default_pool_id"]))
        assert [h["leased"] for h in held] == [4]
    finally:
        for replica in replicas:
            await replica.close()


async def test_a_replica_waits_for_another_replicas_migrations_however_long(empty_database: str) -> None:
    """Migrations may outlast database_timeout_seconds (the bound on a request's lock
    waits): a replica starting meanwhile waits for them rather than failing to start."""
    from broker.store.postgres import MIGRATION_LOCK

    with psycopg.connect(empty_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        opening = asyncio.ensure_future(PostgresStore.open(empty_database, 1, 0.3))
        await asyncio.sleep(1.0)  # three times the replica's lock bound
        assert not opening.done()
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        store = await asyncio.wait_for(opening, 10)
    try:
        assert _versions(empty_database) == [v for v, _, _ in migrations()]
    finally:
        await store.close()
