"""Grow a stopped broker's database to a million leases quickly, straight in SQL.

Only for the scale benchmark (the API would take an hour to make a million leases).
The rows are what the broker itself would have written: leases with their seats and an
audit event each, spread over many servers of the benchmark pool; a tenth are active
(and counted in ``holdings.leased``, so the seat books stay balanced), the rest ended.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from bench.estate import LICENCE, Estate
from broker import audit
from broker.ids import new_id
from broker.store.sqlite import SqliteTx, connect, load_queries


def leases(db: Path, est: Estate, n: int, *, active_share: float = 0.1, per_server: int = 50) -> None:
    now = int(time.time())
    rng = random.Random(7)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    servers = []
    for _ in range((n + per_server - 1) // per_server):
        sid = f"srv_{os.urandom(10).hex()}"
        servers.append(sid)
    conn.executemany(
        "INSERT INTO servers (id, estate_id, pool_id, name, kind, token_hash, created_at, last_seen_at) "
        "VALUES (?, ?, ?, ?, 'server', ?, ?, ?)",
        (
            (sid, est.estate_id, est.pool_id, f"seed-{i:07d}", os.urandom(32), now - 86400, now)
            for i, sid in enumerate(servers)
        ),
    )
    active = int(n * active_share)
    rows: list[tuple[str, str, int, str, int, int, int | None]] = []

    def lease_rows() -> Iterator[tuple[object, ...]]:
        for i in range(n):
            lid = f"lse_{os.urandom(10).hex()}"
            sid = servers[i // per_server]
            if i < active:
                state, exp, ended, reason = "active", now + 3000 + rng.randrange(600), None, None
            else:
                state = rng.choice(("released", "lapsed", "revoked"))
                exp = now - rng.randrange(30 * 86400)
                ended, reason = (
                    exp - rng.randrange(3600),
                    {"released": "released", "lapsed": "expired", "revoked": "revoked_by_admin"}[state],
                )
            rows.append((lid, sid, exp, state, i, exp - 3600, ended))
            yield (
                lid,
                est.estate_id,
                est.pool_id,
                sid,
                f"enc-{i % per_server}",
                LICENCE,
                1,
                state,
                exp - 3600,
                exp - 3600,
                exp,
                ended,
                reason,
            )

    conn.executemany(
        "INSERT INTO leases (id, estate_id, pool_id, server_id, encoder, licence_type, count, state, "
        "created_at, renewed_at, expires_at, ended_at, end_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        lease_rows(),
    )
    conn.executemany(
        "INSERT INTO lease_seats (lease_id, purchase_id, pool_id, count) VALUES (?, ?, ?, 1)",
        ((r[0], est.purchase_id, est.pool_id) for r in rows),
    )
    details = json.dumps({"after": 1, "before": 0, "encoder": "enc", "licence_type": LICENCE})
    conn.executemany(
        "INSERT INTO events (estate_id, at, actor_kind, actor_id, actor_name, action, pool_id, "
        "subject_id, details) VALUES (?, ?, 'server', ?, 'seed', 'lease.granted', ?, ?, ?)",
        ((est.estate_id, r[5], r[1], est.pool_id, r[0], details) for r in rows),
    )
    conn.execute(
        "UPDATE holdings SET leased = leased + ? WHERE pool_id = ? AND purchase_id = ?",
        (active, est.pool_id, est.purchase_id),
    )
    conn.execute("COMMIT")
    _chain_events(db)
    conn.execute("ANALYZE") if os.environ.get("BENCH_ANALYZE") else None
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _chain_events(db: Path) -> None:
    """Hash the seeded events onto the estate's audit chain, as the broker writes them:
    left unchained, the broker would chain a million of them at start (as it does for a
    database from before the chain) and not answer for minutes."""
    conn = connect(db, synchronous="normal")
    conn.row_factory = None  # SqliteTx builds the dicts itself, as in the store
    tx = SqliteTx(conn, load_queries(), new_id)
    try:
        while True:
            conn.execute("BEGIN IMMEDIATE")
            done = audit.chain_backlog(tx, limit=50_000)
            conn.execute("COMMIT")
            if done == 0:
                break
    finally:
        conn.close()
