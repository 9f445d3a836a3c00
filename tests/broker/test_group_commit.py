"""Group commit on the real SQLite store: concurrent writes share one durable COMMIT,
each request is answered only after its COMMIT, and a failed COMMIT fails every request
that shared it (503 ``storage_unavailable``) without persisting any of them.

The fault is a real ``sqlite3.OperationalError`` raised where the store issues its
COMMIT (in the committer thread), on a store that is otherwise the production one (a
subclass whose write connection is wrapped, and whose BEGIN can be held on the event
loop); the domain and the HTTP app are the real ones.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import broker.store.sqlite
from broker.app import create_app
from broker.services import SERVICES
from broker.store.sqlite import WRITER_LOOP_COMMIT_JOBS, SqliteStore
from tests.broker.estate_kit import Estate, base, enroll, estate
from tests.conftest import Broker

# SQLite's group commit (PostgreSQL commits each write on its own).
pytestmark = pytest.mark.sqlite_only

LICENCE = "one-in-one-out"


class Faults:
    """Switches the test flips; the store's flusher (on the loop) and its committer
    thread read them."""

    def __init__(self) -> None:
        self.fail_commits = False
        self.hold_begin = asyncio.Event()
        self.hold_begin.set()  # open: BEGIN proceeds
        self.commits_seen = 0
        self.commit_threads: list[str] = []  # the thread that ran each COMMIT


class _FaultyConnection:
    """The store's real write connection, except that COMMIT can fail as a full disk would."""

    def __init__(self, conn: sqlite3.Connection, faults: Faults) -> None:
        self._conn = conn
        self._faults = faults

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            self._faults.commits_seen += 1
            self._faults.commit_threads.append(threading.current_thread().name)
            if self._faults.fail_commits:
                raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


FAULTS = Faults()


class FaultyStore(SqliteStore):
    def _connect_writer(self) -> Any:
        return _FaultyConnection(super()._connect_writer(), FAULTS)

    async def _begin(self, conn: sqlite3.Connection) -> None:
        # Held here, the flusher has taken its batch and later writes queue up behind it.
        await asyncio.wait_for(FAULTS.hold_begin.wait(), 10)
        await super()._begin(conn)


@pytest.fixture
async def faulty(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: Any,
    operator_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Broker:
    global FAULTS
    FAULTS = Faults()
    monkeypatch.setattr(broker.store.sqlite, "SqliteStore", FaultyStore)
    client = await aiohttp_client(create_app(config_factory(sqlite_synchronous="full")))
    return Broker(client, operator_token, clock)


async def _server(b: Broker, quantity: int) -> tuple[Estate, str, Path]:
    est = await estate(b)
    await b.purchase(est.id, quantity=quantity)
    server = await enroll(b, est, est.default_pool)
    db = b.client.app[SERVICES].config.db_path
    return est, server["server_token"], db


def _acquire(b: Broker, token: str, encoder: str, count: int = 1) -> Awaitable[Any]:
    return b.client.post(
        "/v1/leases", json={"encoder": encoder, "licence_type": LICENCE, "count": count}, headers=b.auth(token)
    )


def _rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def _held_writer(b: Broker, burst: list[Awaitable[Any]], queued: list[str] | None = None) -> list[Any]:
    """Start ``burst`` while the flusher is held in BEGIN, so the requests queue up;
    ``queued`` is given the encoders of the acquires in the order they queued (their
    requests reach the store in whatever order their connections are served)."""
    store = b.client.app[SERVICES].store
    FAULTS.hold_begin.clear()
    blocker = asyncio.ensure_future(store.write(lambda tx: tx.scalar("ping")))
    tasks = [asyncio.ensure_future(r) for r in burst]
    for _ in range(500):
        if len(store._pending) >= len(burst):  # every request is waiting for the next batch
            break
        await asyncio.sleep(0.01)
    if queued is not None:
        queued.extend(job.fn.keywords["encoder"] for job in store._pending if hasattr(job.fn, "keywords"))
    FAULTS.hold_begin.set()
    await asyncio.gather(blocker, return_exceptions=True)  # it fails too when COMMIT does
    return list(await asyncio.gather(*tasks))


async def test_a_batch_yields_the_loop_after_its_time_and_the_rest_follow_in_order(
    faulty: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time at all on the loop: every batch stops after its first job, and the jobs
    # left wait ahead of newer ones; every request is still answered and durable.
    monkeypatch.setattr(broker.store.sqlite, "BATCH_LOOP_SECONDS", 0.0)
    b = faulty
    _, token, db = await _server(b, quantity=200)
    stats = b.client.app[SERVICES].store.stats
    commits, jobs = stats.commits, stats.write_jobs
    queued: list[str] = []
    responses = await _held_writer(b, [_acquire(b, token, f"enc-{i}") for i in range(20)], queued)
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [201] * 20, bodies[:3]
    assert stats.write_jobs - jobs == 21
    assert stats.commits - commits == 21
    assert sorted(queued) == sorted(f"enc-{i}" for i in range(20))
    rows = _rows(db, "SELECT id, encoder FROM leases WHERE state = 'active' ORDER BY rowid")[-20:]
    assert [encoder for _, encoder in rows] == queued  # written in the order they queued
    assert {lease for lease, _ in rows} == {body["id"] for body in bodies}


async def test_a_burst_of_acquires_shares_commits_and_each_is_durable(
    faulty: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However slowly this machine runs the 60 jobs, they are one batch here.
    monkeypatch.setattr(broker.store.sqlite, "BATCH_LOOP_SECONDS", 10.0)
    b = faulty
    _, token, db = await _server(b, quantity=200)
    stats = b.client.app[SERVICES].store.stats
    commits, jobs = stats.commits, stats.write_jobs
    responses = await _held_writer(b, [_acquire(b, token, f"enc-{i}") for i in range(60)])
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [201] * 60, bodies[:3]
    assert stats.write_jobs - jobs == 61  # 60 acquires and the blocker
    assert stats.commits - commits < 60
    assert stats.largest_batch >= 60
    # Every acknowledged lease is in the database file, with its seats counted.
    ids = {body["id"] for body in bodies}
    stored = {row[0] for row in _rows(db, "SELECT id FROM leases WHERE state = 'active'")}
    assert ids == stored
    assert _rows(db, "SELECT SUM(leased) FROM holdings")[0][0] == 60


async def test_a_refused_request_in_a_batch_does_not_affect_the_others(faulty: Broker) -> None:
    b = faulty
    _, token, db = await _server(b, quantity=20)
    responses = await _held_writer(b, [_acquire(b, token, f"enc-{i}") for i in range(30)])
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] * 20 + [409] * 10
    for r in responses:
        if r.status == 409:
            assert (await r.json())["code"] == "pool_exhausted"
    assert _rows(db, "SELECT COUNT(*) FROM leases WHERE state = 'active'")[0][0] == 20
    assert _rows(db, "SELECT SUM(leased) FROM holdings")[0][0] == 20


async def test_a_failed_commit_fails_every_request_that_shared_it(faulty: Broker) -> None:
    b = faulty
    _, token, db = await _server(b, quantity=100)
    stats = b.client.app[SERVICES].store.stats
    failed = stats.failed_commits
    FAULTS.fail_commits = True
    responses = await _held_writer(b, [_acquire(b, token, f"enc-{i}") for i in range(25)])
    for r in responses:
        assert r.status == 503
        body = await r.json()
        assert body["code"] == "storage_unavailable"
    assert stats.failed_commits - failed < 25  # requests really did share failing COMMITs
    assert _rows(db, "SELECT COUNT(*) FROM leases")[0][0] == 0
    assert _rows(db, "SELECT SUM(leased) FROM holdings")[0][0] == 0
    assert _rows(db, "SELECT COUNT(*) FROM events WHERE action LIKE 'lease.%'")[0][0] == 0
    # The disk has room again: the store recovers, and nothing of the failed batch reappears.
    FAULTS.fail_commits = False
    ok = await _acquire(b, token, "enc-0")
    assert ok.status == 201
    assert _rows(db, "SELECT COUNT(*) FROM leases")[0][0] == 1
    assert _rows(db, "SELECT SUM(leased) FROM holdings")[0][0] == 1


async def test_a_pool_lifetime_change_reaches_the_next_acquire(faulty: Broker) -> None:
    """The writer keeps pools in memory; an admin's change must not be missed."""
    b = faulty
    est, token, _ = await _server(b, quantity=10)
    first = await (await _acquire(b, token, "enc-a")).json()
    assert first["lease_seconds"] == 3600
    await b.call("PATCH", f"{base(est)}/pools/{est.default_pool}", est.admin, {"lease_seconds": 120}, 200)
    second = await (await _acquire(b, token, "enc-b")).json()
    assert second["lease_seconds"] == 120
    # A change that is rolled back (the request fails) must not be cached either.
    FAULTS.fail_commits = True
    resp = await b.client.patch(
        f"{base(est)}/pools/{est.default_pool}", json={"lease_seconds": 600}, headers=b.auth(est.admin)
    )
    assert resp.status == 503
    FAULTS.fail_commits = False
    third = await (await _acquire(b, token, "enc-c")).json()
    assert third["lease_seconds"] == 120


async def test_the_writer_commits_a_small_batch_on_its_loop_and_a_large_one_in_the_committer(
    faulty: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer process of ``serve --workers`` sets ``WRITER_LOOP_COMMIT_JOBS``: a batch
    that small, with nothing waiting behind it, is committed on the loop; a larger one
    still in the committer thread, so that the loop can read the next jobs meanwhile."""
    b = faulty
    _, token, db = await _server(b, quantity=100)
    store = b.client.app[SERVICES].store
    main = threading.current_thread().name
    FAULTS.commit_threads.clear()
    assert (await _acquire(b, token, "enc-alone")).status == 201  # one process: the thread
    assert FAULTS.commit_threads[-1] != main

    store.loop_commit_jobs = WRITER_LOOP_COMMIT_JOBS
    FAULTS.commit_threads.clear()
    lone = await _acquire(b, token, "enc-lone")
    assert lone.status == 201
    assert FAULTS.commit_threads == [main]
    # Answered only once durable: the lease is in the database file.
    assert _rows(db, "SELECT COUNT(*) FROM leases WHERE encoder = 'enc-lone'")[0][0] == 1

    monkeypatch.setattr(broker.store.sqlite, "BATCH_LOOP_SECONDS", 10.0)
    FAULTS.commit_threads.clear()
    responses = await _held_writer(b, [_acquire(b, token, f"enc-{i}") for i in range(20)])
    assert [r.status for r in responses] == [201] * 20
    committer = FAULTS.commit_threads[0]  # the held blocker's, with the burst waiting
    assert committer != main
    assert FAULTS.commit_threads == [committer, committer]  # the burst in one batch
    # Small batches with jobs still waiting behind them (each batch cut after its first
    # job) leave the loop to the thread too; the last, with nothing behind it, does not.
    monkeypatch.setattr(broker.store.sqlite, "BATCH_LOOP_SECONDS", 0.0)
    FAULTS.commit_threads.clear()
    responses = await _held_writer(b, [_acquire(b, token, f"enc-{i}") for i in range(20, 23)])
    assert [r.status for r in responses] == [201] * 3
    assert FAULTS.commit_threads == [committer] * 3 + [main]
    assert _rows(db, "SELECT SUM(leased) FROM holdings")[0][0] == 25


async def test_a_failed_commit_on_the_writers_loop_fails_its_request_and_keeps_nothing(faulty: Broker) -> None:
    b = faulty
    _, token, db = await _server(b, quantity=10)
    b.client.app[SERVICES].store.loop_commit_jobs = WRITER_LOOP_COMMIT_JOBS
    FAULTS.fail_commits = True
    FAULTS.commit_threads.clear()
    refused = await _acquire(b, token, "enc-a")
    assert refused.status == 503
    assert (await refused.json())["code"] == "storage_unavailable"
    assert FAULTS.commit_threads == [threading.current_thread().name]
    assert _rows(db, "SELECT COUNT(*) FROM leases")[0][0] == 0
    FAULTS.fail_commits = False
    assert (await _acquire(b, token, "enc-a")).status == 201
    assert _rows(db, "SELECT SUM(leased) FROM holdings")[0][0] == 1
