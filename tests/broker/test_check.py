"""``tenure-broker check``: books built through the real API, rows then tampered with by
hand (sqlite3 or psql, as an intruder or a slip at the console would), and the command run
as a real process beside the live broker, its exact lines and exit code asserted. On both
stores."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.clock import ManualClock
from shared.timefmt import format_ts
from tests.broker.estate_kit import Estate, base, enroll, estate, lease, new_pool
from tests.broker.test_cli import COMMAND, clean_env
from tests.conftest import DAY, Broker
from tests.dbaccess import Database
from tests.postgres import TEST_SECRET_KEY


@pytest.fixture
def clock() -> ManualClock:
    # The check process reads the real clock: the broker's leases must be live by it.
    return ManualClock(float(int(time.time())))


def check(data: Path, database: Database | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    if database is not None and database.url is not None:
        env.update(TENURE_DATABASE_URL=database.url, TENURE_SECRET_KEY=TEST_SECRET_KEY)
    return subprocess.run(
        [*COMMAND, "check", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def check_live(w: World) -> subprocess.CompletedProcess[str]:
    """Run ``check`` while the broker keeps serving on this loop."""
    return await asyncio.to_thread(check, w.data, w.db)


def tamper(db: Database, *statements: str, params: tuple[Any, ...] = ()) -> None:
    """Change rows behind the broker's back, as the sqlite3 shell or psql would (foreign keys off)."""
    for sql in statements:
        db.run(sql, params if "?" in sql else ())


def rows(db: Database, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return db.rows(sql, params)


@dataclass
class World:
    est: Estate
    other: Estate
    purchase: dict[str, Any]
    paris: dict[str, Any]
    server: dict[str, Any]
    lease: dict[str, Any]
    db: Database
    data: Path


async def world(broker: Broker, tmp_path: Path) -> World:
    """Two estates; in one, a purchase split across a pool, a server, a lease, a revoked
    code, a removed server and a deleted pool: every kind of row, every path that frees."""
    est = await estate(broker)
    other = await estate(broker, "Other Estate")
    await broker.purchase(other.id, "SO-OTHER", quantity=3)
    p = await broker.purchase(est.id, "SO-1", quantity=10)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p["id"], "count": 6}])
    srv = await enroll(broker, est, paris["id"], "host-1")
    held = await lease(broker, srv["server_token"], "enc-1", 2)
    gone = await enroll(broker, est, paris["id"], "host-2")
    await lease(broker, gone["server_token"], "enc-2", 1)
    await broker.call("DELETE", f"{base(est)}/servers/{gone['server_id']}", est.admin, status=204)
    code = await broker.call("POST", f"{base(est)}/pools/{paris['id']}/auth-codes", est.admin, {}, 201)
    await broker.call("DELETE", f"{base(est)}/auth-codes/{code['id']}", est.admin, status=204)
    lyon = await new_pool(broker, est, "Lyon", [{"purchase_id": p["id"], "count": 1}])
    await broker.call("POST", f"{base(est)}/pools/{lyon['id']}/auth-codes", est.admin, {}, 201)
    await broker.call("DELETE", f"{base(est)}/pools/{lyon['id']}", est.admin, status=204)
    data = tmp_path / "data"
    return World(est, other, p, paris, srv, held, broker.db, data)


def event_ids(db: Database, estate_id: str) -> list[int]:
    return [r[0] for r in rows(db, "SELECT id FROM events WHERE estate_id = ? ORDER BY id", estate_id)]


async def test_sound_books_check_out_while_the_broker_serves(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    before = rows(w.db, "SELECT COUNT(*), MAX(id) FROM events")
    done = await check_live(w)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    events = before[0][0]
    assert done.stderr.splitlines()[-1] == (
        f"checked 2 estates, 2 purchases, 1 active lease and {events} events: all invariants hold"
    )
    assert rows(w.db, "SELECT COUNT(*), MAX(id) FROM events") == before  # it wrote nothing
    # The broker served on through it.
    await lease(broker, w.server["server_token"], "enc-3", 1)


async def test_an_edited_event_is_named(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    ids = event_ids(w.db, w.est.id)
    edited = ids[3]
    tamper(w.db, "UPDATE events SET actor_name = 'Mallory' WHERE id = ?", params=(edited,))
    done = await check_live(w)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        f"estate {w.est.id}: audit chain broken at event {edited}: its hash does not match its contents "
        "(the row was edited)"
    ]
    assert done.stderr.splitlines()[-1].endswith(": 1 finding")


async def test_an_edited_event_with_its_hash_recomputed_breaks_the_next_link(broker: Broker, tmp_path: Path) -> None:
    from broker import audit

    w = await world(broker, tmp_path)
    ids = event_ids(w.db, w.est.id)
    row = w.db.dicts("SELECT * FROM events WHERE id = ?", (ids[1],))[0]
    assert row["action"] == "purchase.recorded" and '"quantity":10' in row["details"]
    row["details"] = row["details"].replace('"quantity":10', '"quantity":99')  # as if recorded so
    forged = audit.link(row["prev_hash"], audit.view(row))
    tamper(w.db, "UPDATE events SET details = ?, hash = ? WHERE id = ?", params=(row["details"], forged, ids[1]))
    done = await check_live(w)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"estate {w.est.id}: audit chain broken at event {ids[2]}: its prev_hash is not the hash of event "
        f"{ids[1]} (an event between them was deleted, or rows were moved)"
    ]


async def test_a_deleted_event_is_named_at_the_event_after_it(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    ids = event_ids(w.db, w.est.id)
    other_ids = event_ids(w.db, w.other.id)
    tamper(w.db, "DELETE FROM events WHERE id = ?", params=(ids[5],))
    tamper(w.db, "DELETE FROM events WHERE id = ?", params=(other_ids[0],))  # the other estate's first
    done = await check_live(w)
    assert done.returncode == 1
    assert sorted(done.stdout.splitlines()) == sorted(
        [
            f"estate {w.est.id}: audit chain broken at event {ids[6]}: its prev_hash is not the hash of event "
            f"{ids[4]} (an event between them was deleted, or rows were moved)",
            f"estate {w.other.id}: audit chain broken at event {other_ids[1]}: it is the estate's first event, "
            "yet its prev_hash is not the chain's start (events before it were deleted)",
        ]
    )


async def test_reordered_events_are_named(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    ids = event_ids(w.db, w.est.id)
    top = rows(w.db, "SELECT MAX(id) FROM events")[0][0]
    # Swap two events' places: each keeps its contents and links, but not its position.
    tamper(
        w.db,
        f"UPDATE events SET id = {top + 1} WHERE id = {ids[2]}",
        f"UPDATE events SET id = {ids[2]} WHERE id = {ids[3]}",
        f"UPDATE events SET id = {ids[3]} WHERE id = {top + 1}",
    )
    done = await check_live(w)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"estate {w.est.id}: audit chain broken at event {ids[2]}: its prev_hash is not the hash of event "
        f"{ids[1]} (an event between them was deleted, or rows were moved)"
    ]


async def test_broken_books_and_orphans_are_named_one_line_each(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    e, pur, paris, lse = w.est.id, w.purchase["id"], w.paris["id"], w.lease["id"]
    default = w.est.default_pool
    tamper(
        w.db,
        # Invariant 1: a seat vanishes from the Default Pool's holding.
        f"UPDATE holdings SET allocated = allocated - 1 WHERE pool_id = '{default}'",
        # The lease's seats vanish, its holding still counting them as leased.
        f"DELETE FROM leases WHERE id = '{lse}'",
    )
    done = await check_live(w)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"estate {e}: purchase {pur} (SO-1): its holdings add up to 9, its quantity is 10 (invariant 1)",
        f"estate {e}: pool {paris} counts 2 leased of purchase {pur}; its active leases hold 0",
        f"estate {e}: 2 seats of purchase {pur} belong to lease {lse}, which does not exist",
    ]


async def test_a_deleted_pool_with_seats_server_code_and_lease_is_named(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    e, pur, paris = w.est.id, w.purchase["id"], w.paris["id"]
    code = await broker.call("POST", f"{base(w.est)}/pools/{paris}/auth-codes", w.est.admin, {}, 201)
    deleted = int(broker.clock.now())
    tamper(w.db, f"UPDATE pools SET deleted_at = {deleted} WHERE id = '{paris}'")
    done = await check_live(w)
    assert done.returncode == 1
    at = format_ts(deleted)
    assert done.stdout.splitlines() == [
        f"estate {e}: pool {paris} holds 6 of purchase {pur}, and that pool was deleted at {at}",
        f"estate {e}: server {w.server['server_id']} (host-1) is bound to pool {paris}, deleted at {at}",
        f"estate {e}: code {code['id']} is live on pool {paris}, deleted at {at}",
        f"estate {e}: active lease {w.lease['id']} is in pool {paris}, deleted at {at}",
    ]


async def test_a_live_lease_past_grace_or_granted_on_hold_is_named(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    e, pur, lse = w.est.id, w.purchase["id"], w.lease["id"]
    now = int(broker.clock.now())
    lapsed_expiry = now - 40 * DAY  # its grace ended ten days ago: no lease may be live on it
    tamper(w.db, f"UPDATE purchases SET expires_at = {lapsed_expiry} WHERE id = '{pur}'")
    done = await check_live(w)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"estate {e}: live lease {lse} (encoder enc-1) holds seats of purchase {pur} (SO-1), whose grace ended at "
        f"{format_ts(lapsed_expiry + 30 * DAY)} (invariant 7)"
    ]
    # On hold since before the lease was granted: it was granted from a held purchase.
    created = rows(w.db, "SELECT created_at FROM leases WHERE id = ?", lse)[0][0]
    tamper(
        w.db,
        f"UPDATE purchases SET expires_at = {now + 300 * DAY}, status = 'on_hold', held_at = {created - 60} "
        f"WHERE id = '{pur}'",
    )
    done = await check_live(w)
    assert done.stdout.splitlines() == [
        f"estate {e}: live lease {lse} (encoder enc-1) was granted at {format_ts(created)} seats of purchase "
        f"{pur} (SO-1), on hold since {format_ts(created - 60)} (invariant 7)"
    ]
    # Put on hold through the API after the grant, within the same second (times are whole
    # seconds): renewals go on, and the books hold.
    tamper(w.db, f"UPDATE purchases SET status = 'valid', held_at = NULL WHERE id = '{pur}'")
    assert int(broker.clock.now()) == created
    await broker.call("PATCH", f"{base(w.est)}/purchases/{pur}", broker.operator, {"status": "on_hold"}, 200)
    done = await check_live(w)
    assert done.returncode == 0, done.stdout


@pytest.mark.sqlite_only  # SQLite alone lets a session ignore CHECK constraints
async def test_invariant_2_and_a_lease_count_are_checked_even_past_the_check_constraint(
    broker: Broker, tmp_path: Path
) -> None:
    w = await world(broker, tmp_path)
    e, pur, paris, lse = w.est.id, w.purchase["id"], w.paris["id"], w.lease["id"]
    conn = sqlite3.connect(w.db.path)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.execute(f"UPDATE holdings SET leased = 7 WHERE pool_id = '{paris}'")
    conn.execute(f"UPDATE leases SET count = 3 WHERE id = '{lse}'")
    conn.commit()
    conn.close()
    done = await check_live(w)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"estate {e}: pool {paris} holds purchase {pur} with 7 leased of 6 allocated (invariant 2)",
        f"estate {e}: pool {paris} counts 7 leased of purchase {pur}; its active leases hold 2",
        f"estate {e}: lease {lse} is for 3; its seats add up to 2",
    ]


def test_check_cannot_open_exits_2(tmp_path: Path) -> None:
    missing = check(tmp_path / "nowhere")
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"tenure-broker: cannot open the database: {tmp_path / 'nowhere' / 'tenure.db'} does not exist"
    )
    assert not (tmp_path / "nowhere").exists()
    newer = tmp_path / "newer"
    newer.mkdir()
    conn = sqlite3.connect(newer / "tenure.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    refused = check(newer)
    assert refused.returncode == 2
    assert "the database is at schema 99; this broker knows up to" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.sqlite_only  # PostgreSQL's column types refuse 'yesterday' for a time
async def test_rows_edited_into_nonsense_are_findings_not_a_traceback(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    ids, others = event_ids(w.db, w.est.id), event_ids(w.db, w.other.id)
    tamper(
        w.db,
        f"UPDATE events SET details = '{{not json' WHERE id = {ids[0]}",
        f"UPDATE events SET at = 'yesterday' WHERE id = {others[1]}",
        f"UPDATE pools SET deleted_at = 'soon' WHERE id = '{w.paris['id']}'",
    )
    done = await check_live(w)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    server, paris = w.server["server_id"], w.paris["id"]
    assert f"estate {w.est.id}: server {server} (host-1) is bound to pool {paris}, deleted at 'soon'" in lines
    unreadable = "its contents cannot be read (the row was edited)"
    assert f"estate {w.est.id}: audit chain broken at event {ids[0]}: {unreadable}" in lines
    assert f"estate {w.other.id}: audit chain broken at event {others[1]}: {unreadable}" in lines


async def test_the_policies_invariants_are_checked(broker: Broker, tmp_path: Path) -> None:
    w = await world(broker, tmp_path)
    e, pur, paris = w.est.id, w.purchase["id"], w.paris["id"]
    pool_path = f"{base(w.est)}/pools/{paris}"
    await broker.call("PATCH", pool_path, w.est.admin, {"soft_lock_seconds": {"hardware": 45 * DAY}}, 200)
    limits = {"limits": {"one-in-one-out": {"reserved": 4}}}
    await broker.call("PATCH", f"{base(w.est)}/servers/{w.server['server_id']}", w.est.admin, limits, 200)
    release = {"encoder": "enc-1", "licence_type": "one-in-one-out", "count": 0}
    await broker.call("POST", "/v1/leases", w.server["server_token"], release, 204)  # its 2 seats are held for it
    assert (await check_live(w)).returncode == 0
    tamper(
        w.db,
        "UPDATE server_limits SET reserved = 9",
        "UPDATE soft_locks SET count = 7",
        f"INSERT INTO soft_locks (pool_id, encoder, purchase_id, count, lease_id) "
        f"VALUES ('{paris}', 'enc-nobody', '{pur}', 1, 'lse_x')",
    )
    done = await check_live(w)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"estate {e}: servers of pool {paris} reserve 9 one-in-one-out licences; the pool holds 6",
        f"estate {e}: pool {paris} holds 7 seats of purchase {pur} for encoders beside 0 leased, of 6 allocated "
        "(invariant 2)",
        f"estate {e}: pool {paris} holds 1 seats of purchase {pur} for encoder enc-nobody, "
        "which has no soft-lock window there",
    ]
