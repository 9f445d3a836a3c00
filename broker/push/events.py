"""What the broker pushes to agents: events recorded in the admin action's transaction.

Every function here runs inside one store transaction and speaks no SQL and no HTTP. An
admin action that an agent must hear of at once (a force-release, a server removed, a
pool's lease lifetime changed, the signing keys rotated) calls one of the ``record_…``
functions in its own write, so the event exists exactly when the action does; the rows
are what ``GET /v1/stream`` serves (``broker/api/stream.py``), on whichever replica the
agent is connected to, and what it resumes from.

An event concerns one server (``server_id``), every server bound to a pool
(``pool_id``), or every server (neither). Ids grow in commit order (on PostgreSQL
``stream_lock`` makes them), so "everything after id N" is a complete answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from broker.store.base import Row, Tx
from shared.timefmt import format_ts

LEASE_REVOKED = "lease.revoked"
LEASE_RELEASED = "lease.released"
SERVER_REMOVED = "server.removed"
POOL_CHANGED = "pool.changed"
KEYS_ROTATED = "keys.rotated"
# Not stored: what the stream itself says (broker/api/stream.py).
READY = "ready"
RESYNC = "resync"
TYPES = (LEASE_REVOKED, LEASE_RELEASED, SERVER_REMOVED, POOL_CHANGED, KEYS_ROTATED)
# At most this many events are read in one go (a backlog larger is read in several).
BATCH = 500


@dataclass(frozen=True)
class Event:
    id: int
    at: int
    type: str
    server_id: str | None
    pool_id: str | None
    data: dict[str, Any]

    def concerns(self, server_id: str, pool_id: str | None) -> bool:
        if self.server_id is not None:
            return self.server_id == server_id
        if self.pool_id is not None:
            return self.pool_id == pool_id
        return True

    def payload(self) -> dict[str, Any]:
        """The event as sent: ``{type, id, timestamp, data}``, as a webhook's body is."""
        return {"type": self.type, "id": str(self.id), "timestamp": format_ts(self.at), "data": self.data}


def _event(row: Row) -> Event:
    return Event(
        id=int(row["id"]),
        at=int(row["at"]),
        type=str(row["type"]),
        server_id=row["server_id"],
        pool_id=row["pool_id"],
        data=json.loads(row["data"]),
    )


def record(
    tx: Tx,
    now: float,
    kind: str,
    data: dict[str, Any],
    *,
    server_id: str | None = None,
    pool_id: str | None = None,
) -> None:
    """Add an event to the stream, in the caller's transaction, and wake the streams at COMMIT."""
    if kind not in TYPES:
        raise ValueError(f"unknown stream event type {kind!r}")
    tx.run("stream_lock")
    tx.run(
        "stream_event_add",
        at=int(now),
        type=kind,
        server_id=server_id,
        pool_id=pool_id,
        data=json.dumps(data, separators=(",", ":"), sort_keys=True),
    )
    tx.run("stream_notify")


def record_lease_ended(tx: Tx, now: float, lease: Row, state: str, reason: str) -> None:
    """An admin ended ``lease``: ``lease.revoked`` (or ``lease.released``) to its server."""
    kind = LEASE_REVOKED if state == "revoked" else LEASE_RELEASED
    record(
        tx,
        now,
        kind,
        {"lease_id": lease["id"], "encoder": lease["encoder"], "reason": reason},
        server_id=lease["server_id"],
    )


def record_server_removed(tx: Tx, now: float, server_id: str, lease_ids: list[str]) -> None:
    record(tx, now, SERVER_REMOVED, {"server_id": server_id, "lease_ids": lease_ids}, server_id=server_id)


def record_pool_changed(tx: Tx, now: float, pool_id: str, lease_seconds: int) -> None:
    """The pool's lease lifetime changed: its servers renew to pick it up."""
    data = {"pool_id": pool_id, "lease_seconds": lease_seconds, "reason": "lease_seconds"}
    record(tx, now, POOL_CHANGED, data, pool_id=pool_id)


def record_purchase_changed(tx: Tx, now: float, purchase_id: str) -> None:
    """A purchase was put on hold, let go, or given another expiry: the pools whose live
    leases hold its seats hear ``pool.changed``, and their servers renew to learn the
    lease's new state and expiry now rather than at the next renewal."""
    for row in tx.all("stream_pools_leasing_purchase", purchase_id=purchase_id):
        data = {"pool_id": row["pool_id"], "lease_seconds": row["lease_seconds"], "reason": "purchase"}
        record(tx, now, POOL_CHANGED, data, pool_id=row["pool_id"])


def record_server_rebound(tx: Tx, now: float, server_id: str, pool_id: str, lease_seconds: int) -> None:
    """The server now draws from another pool: ``pool.changed`` to it alone, naming the new pool."""
    data = {"pool_id": pool_id, "lease_seconds": lease_seconds, "reason": "rebound"}
    record(tx, now, POOL_CHANGED, data, server_id=server_id)


def record_keys_rotated(tx: Tx, now: float, kid: str) -> None:
    record(tx, now, KEYS_ROTATED, {"kid": kid})


@dataclass(frozen=True)
class Backlog:
    """What a (re)connecting stream sends first: the events after its ``Last-Event-ID``,
    or ``resync`` when that id is before the retention (pruned) or not this deployment's."""

    events: list[Event]
    head: int
    resync: bool
    more: bool


def backlog(tx: Tx, server_id: str, pool_id: str | None, after: int | None) -> Backlog:
    """The events for the server after id ``after`` (None: a first connection, nothing owed)."""
    head = int(tx.scalar("stream_head") or 0)
    if after is None:
        return Backlog([], head, resync=False, more=False)
    horizon = int(tx.scalar("stream_horizon") or 0)
    if after < horizon or after > head:
        return Backlog([], head, resync=True, more=False)
    rows = tx.all("stream_events_of_server", after=after, server_id=server_id, pool_id=pool_id, limit=BATCH + 1)
    return Backlog([_event(r) for r in rows[:BATCH]], head, resync=False, more=len(rows) > BATCH)


def since(tx: Tx, after: int) -> tuple[list[Event], int]:
    """Every event after id ``after`` (at most ``BATCH``), and the head: what a broker
    process's hub fans out to its open streams."""
    rows = tx.all("stream_events_after", after=after, limit=BATCH)
    head = int(tx.scalar("stream_head") or 0)
    return [_event(r) for r in rows], head


def head(tx: Tx) -> int:
    return int(tx.scalar("stream_head") or 0)


def prune(tx: Tx, now: float, keep_seconds: float, keep_rows: int) -> int:
    """Forget events older than ``keep_seconds`` and all but the newest ``keep_rows``;
    returns the highest id pruned (0: none). A resume from before it gets ``resync``."""
    through = int(tx.scalar("stream_prune_point", before=int(now - keep_seconds), keep=keep_rows) or 0)
    if through <= 0:
        return 0
    tx.run("stream_horizon_set", through=through)
    tx.run("stream_prune", through=through)
    return through
