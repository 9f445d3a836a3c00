"""The books, read straight from the SQLite file, and docs/design.md's invariants over them.

The tests in this folder call ``check_books(path)`` after every step, every kill and
every storage fault: it opens its own read-only connection, so it sees exactly what a
restarted broker would see, and owes nothing to the broker's code.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

GRACE = 30 * 86400


def connect_ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def grace_end(p: Any) -> int:
    end = int(p["expires_at"]) + GRACE
    if p["status"] == "on_hold" and p["held_at"] is not None:
        end = min(end, int(p["held_at"]) + GRACE)
    return end


def check_books(path: Path, conn: sqlite3.Connection | None = None) -> dict[str, int]:
    """Assert invariants 1 and 2 (and the bookkeeping that backs them); return counts.

    1. For every purchase, the sum of its holdings over pools is its quantity.
    2. For every (pool, purchase), ``leased`` <= ``allocated``, and ``leased`` is
       exactly the seats of that pair's active leases; an active lease's count is the
       sum of its seats, all from its own pool and of its own licence type.

    And every estate's audit chain is whole (``check_chains``).
    """
    own = conn is None
    db = conn or connect_ro(path)
    try:
        purchases = {r["id"]: r for r in db.execute("SELECT * FROM purchases")}
        allocated: dict[str, int] = defaultdict(int)
        holdings = {}
        for h in db.execute("SELECT * FROM holdings"):
            assert 0 <= h["leased"] <= h["allocated"], dict(h)
            allocated[h["purchase_id"]] += h["allocated"]
            holdings[(h["pool_id"], h["purchase_id"])] = h
        for pid, p in purchases.items():
            assert allocated[pid] == p["quantity"], (pid, allocated[pid], p["quantity"])
        seats_in: dict[tuple[str, str], int] = defaultdict(int)
        active = 0
        for lease in db.execute("SELECT * FROM leases WHERE state = 'active'"):
            active += 1
            seats = db.execute("SELECT * FROM lease_seats WHERE lease_id = ?", (lease["id"],)).fetchall()
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
        dup = db.execute(
            "SELECT server_id, encoder, COUNT(*) n FROM leases WHERE state = 'active' "
            "GROUP BY server_id, encoder HAVING n > 1"
        ).fetchall()
        assert not dup, [dict(d) for d in dup]
        events = check_chains(db)
        return {"purchases": len(purchases), "holdings": len(holdings), "active_leases": active, "events": events}
    finally:
        if own:
            db.close()


def check_chains(db: sqlite3.Connection) -> int:
    """Assert that every estate's audit chain is whole, by docs/design.md's definition
    ("The audit chain") written out again here; return the number of events.

    Group commit rolls a failed job back to its savepoint while its batch commits: a chain
    head it moved must move back with it, or the next event would fork the chain.
    """
    heads: dict[str, str] = {}
    n = 0
    for e in db.execute("SELECT * FROM events ORDER BY id"):
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


def snapshot(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a write can touch, for "a failed operation changed nothing"."""
    out = {}
    for table in (
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
    ):
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()
        out[table] = sorted((tuple(r) for r in rows), key=repr)
    return out


def integrity_ok(path: Path) -> None:
    db = connect_ro(path)
    try:
        (result,) = db.execute("PRAGMA integrity_check").fetchone()
        assert result == "ok", result
        fk = db.execute("PRAGMA foreign_key_check").fetchall()
        assert not fk, [tuple(r) for r in fk]
    finally:
        db.close()
