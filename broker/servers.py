"""Servers and domains bound to pools: listing, rebinding and removal."""

from __future__ import annotations

from typing import Any

from broker import audit, leases, paging, pools
from broker.errors import Inconsistent, NotFound, ServerHasLeases
from broker.principal import Principal
from broker.push import events as push
from broker.store.base import Row, Tx
from broker.webhooks import events as webhook_events
from shared.timefmt import format_ts
from shared.words import count


def get(tx: Tx, estate_id: str, server_id: str) -> Row:
    row = tx.one("server_by_id", server_id=server_id, estate_id=estate_id)
    if row is None:
        raise NotFound("No such server or domain in this estate.")
    return row


def _render(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "name": r["name"],
        "kind": r["kind"],
        "pool_id": r["pool_id"],
        "enrolled_at": format_ts(r["created_at"]),
        "last_seen_at": format_ts(r["last_seen_at"]) if r["last_seen_at"] else None,
        "in_use": r["in_use"],
        "leases": r["leases"],
    }


def list_all(
    tx: Tx, now: float, estate_id: str, pool_id: str | None = None, *, after: str = "", limit: int | None = None
) -> paging.Page:
    """Servers and domains by name, a page at a time (see ``broker.paging``)."""
    return paging.fetch(
        tx, "servers_of_estate", _render, after=after, limit=limit, estate_id=estate_id, now=int(now), pool_id=pool_id
    )


def rebind(tx: Tx, now: float, actor: Principal, estate_id: str, server_id: str, pool_id: str) -> dict[str, Any]:
    """Bind the server to another pool of the estate; refused while it holds leases."""
    server = get(tx, estate_id, server_id)
    pool = pools.get(tx, estate_id, pool_id)
    leases.lapse_due(tx, now, server["pool_id"])
    held = tx.all("leases_active_of_server", server_id=server_id)
    if held:
        raise ServerHasLeases(
            f"{server['name']!r} holds {count(len(held), 'lease')}; release them before moving it.",
            leases=len(held),
        )
    tx.run("server_rebind", server_id=server_id, pool_id=pool_id)
    if pool_id != server["pool_id"]:
        push.record_server_rebound(tx, now, server_id, pool_id, pool["lease_seconds"])
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.SERVER_REBOUND,
        pool_id=pool_id,
        subject_id=server_id,
        name=server["name"],
        before={"pool_id": server["pool_id"]},
        after={"pool_id": pool_id},
    )
    row = tx.one("server_view", server_id=server_id, estate_id=estate_id, now=int(now))
    if row is None:
        raise Inconsistent(f"server {server_id}, read in this transaction, is not there")
    return _render(row)


def remove(tx: Tx, now: float, actor: Principal, estate_id: str, server_id: str) -> int:
    """Forget the server: its leases are freed at once and its token stops working."""
    server = get(tx, estate_id, server_id)
    freed = leases.revoke_all_of_server(tx, now, actor, server_id)
    tx.run("server_remove", server_id=server_id, now=int(now))
    push.record_server_removed(tx, now, server_id, freed)
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.SERVER_REMOVED,
        pool_id=server["pool_id"],
        subject_id=server_id,
        name=server["name"],
        kind=server["kind"],
        leases_freed=len(freed),
    )
    data = {"server_id": server_id, "name": server["name"], "kind": server["kind"], "pool_id": server["pool_id"]}
    webhook_events.emit(tx, now, estate_id, webhook_events.SERVER_REMOVED, {**data, "leases_freed": len(freed)})
    return len(freed)
