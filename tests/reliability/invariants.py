"""The books, read straight from the database, and docs/design.md's invariants over them.

The tests in this folder call ``check_books(source)`` after every step, every kill and
every storage fault. ``source`` is the broker's database on either store: a
``tests.dbaccess.Database`` (``broker.db``), the SQLite file's ``Path``, or a ``Reader``
kept open between checks. Each check opens its own read-only connection (or uses the
reader's) and reads everything in ONE transaction: on SQLite a read transaction on the
file, on PostgreSQL ``REPEATABLE READ READ ONLY``, so that a check running beside live
writers sees one consistent state of the books, exactly what a restarted broker or
another replica would see, and owes nothing to the broker's code.

``connect_ro`` and ``integrity_ok`` remain for what only makes sense on the SQLite file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.dbaccess import Database

GRACE = 30 * 86400
# Every table a write can touch, for "a failed operation changed nothing". Rate-limit
# budgets, console sessions, keys and the health probe are left out: a refused call may
# spend a budget, and none of them are the books.
TABLES = (
    "estates",
    "admins",
    "pools",
    "purchases",
    "holdings",
    "leases",
    "lease_seats",
    "servers",
    "auth_codes",
    "moves",
    "events",
    "idempotency",
    "stream_events",  # what agents are told: a refused action tells them nothing
    "encoder_windows",
    "soft_locks",
    "server_limits",
)


class Query:
    """Statements run inside one read transaction: ``q(sql, params)`` is their rows, as dicts."""

    def __init__(self, run: Callable[[str, tuple[Any, ...]], list[dict[str, Any]]], postgres: bool) -> None:
        self._run = run
        self.postgres = postgres

    def __call__(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self._run(sql, params)


def connect_ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


class Reader:
    """A read-only connection to either store, kept open across many consistent reads.

    ``with reader.transaction() as q: q("SELECT … WHERE id = ?", (x,))``: every ``q``
    inside the block sees one snapshot. Statements use ``?`` placeholders on both stores.
    """

    def __init__(self, source: Database | Path) -> None:
        if isinstance(source, Path):
            source = Database(None, source)
        self.postgres = source.postgres
        self._pg: psycopg.Connection[dict[str, Any]] | None = None
        self._lite: sqlite3.Connection | None = None
        if source.url is not None:
            self._pg = psycopg.connect(source.url, autocommit=True, row_factory=dict_row)
        else:
            self._lite = connect_ro(source.path)

    @classmethod
    def wrapping(cls, conn: sqlite3.Connection) -> Reader:
        """A reader on a SQLite connection the caller opened (and will close)."""
        reader = cls.__new__(cls)
        reader.postgres, reader._pg, reader._lite = False, None, conn
        return reader

    @contextmanager
    def transaction(self) -> Iterator[Query]:
        if self._pg is not None:
            pg = self._pg
            pg.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield Query(lambda sql, params: pg.execute(sql.replace("?", "%s"), params).fetchall(), True)
            finally:
                pg.execute("ROLLBACK")
            return
        lite = self._lite
        assert lite is not None
        # Python's sqlite3 runs a SELECT outside any transaction (each statement its own
        # snapshot): BEGIN makes the block's reads one snapshot, as on PostgreSQL.
        ours = not lite.in_transaction
        if ours:
            lite.execute("BEGIN")
        try:
            yield Query(lambda sql, params: [dict(r) for r in _rows(lite, sql, params)], False)
        finally:
            if ours:
                lite.execute("ROLLBACK")

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._lite is not None:
            self._lite.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Source = Database | Path | Reader | sqlite3.Connection


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row  # whatever the connection's own factory is
    return cur.execute(sql, params).fetchall()


@contextmanager
def reading(source: Source) -> Iterator[Query]:
    """One consistent read transaction on ``source``; a connection opened for it is closed after."""
    if isinstance(source, Reader):
        with source.transaction() as q:
            yield q
    elif isinstance(source, sqlite3.Connection):
        with Reader.wrapping(source).transaction() as q:
            yield q
    else:
        with Reader(source) as reader, reader.transaction() as q:
            yield q


def grace_end(p: Any) -> int:
    end = int(p["expires_at"]) + GRACE
    if p["status"] == "on_hold" and p["held_at"] is not None:
        end = min(end, int(p["held_at"]) + GRACE)
    return end


def check_books(source: Source, now: int | None = None) -> dict[str, int]:
    """Assert invariants 1 and 2 (and the bookkeeping that backs them); return counts.

    1. For every purchase, the sum of its holdings over pools is its quantity.
    2. For every (pool, purchase), ``leased`` <= ``allocated``, and ``leased`` is
       exactly the seats of that pair's active leases; an active lease's count is the
       sum of its seats, all from its own pool and of its own licence type.

    With the licence policies: a pool's reservations of a type never exceed its holding
    of it; every held (soft-locked) seat belongs to an encoder with a recorded window;
    and, given ``now``, the seats leased plus those held in open windows never exceed a
    holding's ``allocated``.

    And every estate's audit chain is whole (``check_chains``). All of it from one
    snapshot of the database.
    """
    with reading(source) as q:
        purchases = {r["id"]: r for r in q("SELECT * FROM purchases")}
        allocated: dict[str, int] = defaultdict(int)
        holdings = {}
        for h in q("SELECT * FROM holdings"):
            assert 0 <= h["leased"] <= h["allocated"], h
            allocated[h["purchase_id"]] += h["allocated"]
            holdings[(h["pool_id"], h["purchase_id"])] = h
        for pid, p in purchases.items():
            assert allocated[pid] == p["quantity"], (pid, allocated[pid], p["quantity"])
        seats_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in q("SELECT * FROM lease_seats"):
            seats_of[s["lease_id"]].append(s)
        seats_in: dict[tuple[str, str], int] = defaultdict(int)
        active = 0
        for lease in q("SELECT * FROM leases WHERE state = 'active'"):
            active += 1
            seats = seats_of.get(lease["id"], [])
            assert seats, f"active lease {lease['id']} holds no seat"
            assert sum(s["count"] for s in seats) == lease["count"], lease["id"]
            for s in seats:
                assert s["pool_id"] == lease["pool_id"], lease["id"]
                assert purchases[s["purchase_id"]]["licence_type"] == lease["licence_type"]
                seats_in[(s["pool_id"], s["purchase_id"])] += s["count"]
        for key, h in holdings.items():
            assert h["leased"] == seats_in.get(key, 0), (key, h["leased"], seats_in.get(key, 0))
        for key in seats_in:
            assert key in holdings, f"seats leased from a holding that does not exist: {key}"
        dup = q(
            "SELECT server_id, encoder, COUNT(*) AS n FROM leases WHERE state = 'active' "
            "GROUP BY server_id, encoder HAVING COUNT(*) > 1"
        )
        assert not dup, dup
        _check_policies(q, holdings, purchases, now)
        events = _check_chains(q)
    return {"purchases": len(purchases), "holdings": len(holdings), "active_leases": active, "events": events}


def _check_policies(q: Query, holdings: dict[tuple[str, str], Any], purchases: dict[str, Any], now: int | None) -> None:
    by_type: dict[tuple[str, str], int] = defaultdict(int)
    for (pool_id, pid), h in holdings.items():
        by_type[(pool_id, purchases[pid]["licence_type"])] += h["allocated"]
    reserved = q(
        "SELECT s.pool_id, l.licence_type, SUM(l.reserved) AS n FROM server_limits l "
        "JOIN servers s ON s.id = l.server_id WHERE s.removed_at IS NULL GROUP BY s.pool_id, l.licence_type"
    )
    for r in reserved:
        assert r["n"] <= by_type[(r["pool_id"], r["licence_type"])], ("reservations exceed the pool", r)
    windows = {(w["pool_id"], w["encoder"]): w for w in q("SELECT * FROM encoder_windows")}
    pools = {p["id"]: p for p in q("SELECT id, soft_lock_hardware, soft_lock_container FROM pools")}
    held: dict[tuple[str, str], int] = defaultdict(int)
    for lock in q("SELECT * FROM soft_locks"):
        w = windows.get((lock["pool_id"], lock["encoder"]))
        assert w is not None, ("a held seat of an encoder with no window", lock)
        pool = pools[lock["pool_id"]]
        seconds = pool["soft_lock_container"] if w["kind"] == "container" else pool["soft_lock_hardware"]
        if now is not None and now < w["started_at"] + seconds:
            held[(lock["pool_id"], lock["purchase_id"])] += lock["count"]
    for key, n in held.items():
        h = holdings.get(key)
        assert h is not None and h["leased"] + n <= h["allocated"], ("held seats beyond the holding", key, n, h)


def check_chains(source: Source) -> int:
    """Assert that every estate's audit chain is whole, by docs/design.md's definition
    ("The audit chain") written out again here; return the number of events.

    Group commit rolls a failed job back to its savepoint while its batch commits: a chain
    head it moved must move back with it, or the next event would fork the chain. Across
    replicas, two writers must never chain onto the same head.
    """
    with reading(source) as q:
        return _check_chains(q)


def _check_chains(q: Query) -> int:
    heads: dict[str, str] = {}
    n = 0
    for e in q("SELECT * FROM events ORDER BY id"):
        n += 1
        prev = heads.get(e["estate_id"], "0" * 64)
        body = {
            "action": e["action"],
            "actor": {"id": e["actor_id"], "kind": e["actor_kind"], "name": e["actor_name"]},
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["at"])),
            "details": json.loads(e["details"]),
            "pool_id": e["pool_id"],
            "subject_id": e["subject_id"],
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        assert e["prev_hash"] == prev, (e["id"], e["estate_id"], "prev_hash")
        assert hashlib.sha256((prev + canonical).encode("ascii")).hexdigest() == e["hash"], (e["id"], "hash")
        heads[e["estate_id"]] = e["hash"]
    return n


def snapshot(source: Source) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a write can touch (``TABLES``), read in one transaction,
    for "a failed operation changed nothing"."""
    out: dict[str, list[tuple[Any, ...]]] = {table: [] for table in TABLES}
    with reading(source) as q:
        if q.postgres:
            # One round trip rather than one per table: the model test takes a snapshot
            # before and after every refused operation. Each row comes as its JSON text,
            # its columns in order (bytea as hex text: it is compared, never used).
            union = " UNION ALL ".join(f"SELECT '{t}' AS t, row_to_json(x)::text AS r FROM {t} x" for t in TABLES)
            for row in q(union):
                out[row["t"]].append(tuple(json.loads(row["r"]).values()))
        else:
            for table in TABLES:
                out[table] = [tuple(r.values()) for r in q(f"SELECT * FROM {table}")]
    return {table: sorted(rows, key=repr) for table, rows in out.items()}


def integrity_ok(path: Path) -> None:
    """SQLite's own checks of the file: ``integrity_check`` and ``foreign_key_check``."""
    db = connect_ro(path)
    try:
        (result,) = db.execute("PRAGMA integrity_check").fetchone()
        assert result == "ok", result
        fk = db.execute("PRAGMA foreign_key_check").fetchall()
        assert not fk, [tuple(r) for r in fk]
    finally:
        db.close()
