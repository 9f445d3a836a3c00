"""Servers and domains bound to pools: listing, rebinding, limits and removal.

A domain is a server row of kind ``domain``: everything here, limits included, holds for
both alike.
"""

from __future__ import annotations

from typing import Any

from broker import audit, leases, paging, policies, pools
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


def _render(tx: Tx, r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "name": r["name"],
        "kind": r["kind"],
        "pool_id": r["pool_id"],
        "enrolled_at": format_ts(r["created_at"]),
        "last_seen_at": format_ts(r["last_seen_at"]) if r["last_seen_at"] else None,
        "in_use": r["in_use"],
        "leases": r["leases"],
        "limits": policies.limits_of_server(tx, r["id"]),
    }


def list_all(
    tx: Tx, now: float, estate_id: str, pool_id: str | None = None, *, after: str = "", limit: int | None = None
) -> paging.Page:
    """Servers and domains by name, a page at a time (see ``broker.paging``)."""
    return paging.fetch(
        tx,
        "servers_of_estate",
        lambda r: _render(tx, r),
        after=after,
        limit=limit,
        estate_id=estate_id,
        now=int(now),
        pool_id=pool_id,
    )


def update(
    tx: Tx,
    now: float,
    actor: Principal,
    estate_id: str,
    server_id: str,
    *,
    pool_id: str | None,
    limits: dict[str, dict[str, int] | None] | None,
) -> dict[str, Any]:
    """Rebind the server (``rebind``), then set its limits; its reservations are checked
    against the pool it is bound to, as they stand after both."""
    if pool_id is not None:
        rebind(tx, now, actor, estate_id, server_id, pool_id, check_reservations=False)
    if limits:
        policies.set_limits(tx, now, actor, get(tx, estate_id, server_id), limits)
    if pool_id is not None:
        policies.check_rebind(tx, now, server_id, pool_id)
    return view(tx, now, estate_id, server_id)


def view(tx: Tx, now: float, estate_id: str, server_id: str) -> dict[str, Any]:
    row = tx.one("server_view", server_id=server_id, estate_id=estate_id, now=int(now))
    if row is None:
        raise NotFound("No such server or domain in this estate.")
    return _render(tx, row)


def rebind(
    tx: Tx,
    now: float,
    actor: Principal,
    estate_id: str,
    server_id: str,
    pool_id: str,
    *,
    check_reservations: bool = True,
) -> dict[str, Any]:
    """Bind the server to another pool of the estate; refused while it holds leases, or
    when its reservations would not fit the pool's holding."""
    server = get(tx, estate_id, server_id)
    pool = pools.get(tx, estate_id, pool_id)
    leases.lapse_due(tx, now, server["pool_id"])
    held = tx.all("leases_active_of_server", server_id=server_id)
    if held:
        raise ServerHasLeases(
            f"{server['name']!r} holds {count(len(held), 'lease')}; release them before moving it.",
            leases=len(held),
        )
    if check_reservations:
        policies.check_rebind(tx, now, server_id, pool_id)
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
    return _render(tx, row)


def remove(
    tx: Tx, now: float, actor: Principal, estate_id: str, server_id: str, *, override_soft_lock: bool = False
) -> int:
    """Forget the server: its leases are freed at once and its token stops working.

    Its encoders' seats are held for them inside their soft-lock windows (an encoder may
    come back through another server of the pool) unless ``override_soft_lock``.
    """
    server = get(tx, estate_id, server_id)
    freed = leases.revoke_all_of_server(tx, now, actor, server_id, override_soft_lock=override_soft_lock)
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
        **({"override_soft_lock": True} if override_soft_lock else {}),
    )
    data = {"server_id": server_id, "name": server["name"], "kind": server["kind"], "pool_id": server["pool_id"]}
    webhook_events.emit(tx, now, estate_id, webhook_events.SERVER_REMOVED, {**data, "leases_freed": len(freed)})
    return len(freed)
