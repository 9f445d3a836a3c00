"""The audit log: every change, appended in the same transaction as the change."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from broker.principal import Principal
from broker.store.base import Tx
from shared.timefmt import format_ts

PAGE_MAX = 500


class Action(StrEnum):
    """Every action the audit log records; the console's audit page names each one."""

    ESTATE_CREATED = "estate.created"
    ADMIN_ADDED = "admin.added"
    ADMIN_REMOVED = "admin.removed"
    PURCHASE_RECORDED = "purchase.recorded"
    PURCHASE_UPDATED = "purchase.updated"
    POOL_CREATED = "pool.created"
    POOL_UPDATED = "pool.updated"
    POOL_DELETED = "pool.deleted"
    LICENCES_MOVED = "licences.moved"
    AUTH_CODE_CREATED = "auth_code.created"
    AUTH_CODE_REVOKED = "auth_code.revoked"
    SERVER_ENROLLED = "server.enrolled"
    SERVER_REBOUND = "server.rebound"
    SERVER_REMOVED = "server.removed"
    LEASE_GRANTED = "lease.granted"
    LEASE_CHANGED = "lease.changed"
    LEASE_RELEASED = "lease.released"
    LEASE_REVOKED = "lease.revoked"
    LEASE_LAPSED = "lease.lapsed"
    LEASE_RENEWAL_REFUSED = "lease.renewal_refused"


def record(
    tx: Tx,
    now: float,
    actor: Principal | None,
    estate_id: str | None,
    action: Action,
    *,
    pool_id: str | None = None,
    subject_id: str | None = None,
    **details: Any,
) -> None:
    """Append one event. ``actor`` None means the broker itself (a lapse, a reaper)."""
    name: str | None
    if actor is None:
        kind, actor_id, name = "system", None, "broker"
    else:
        kind, actor_id = actor.kind, actor.actor_id
        name = actor.name if actor.kind != "operator" else "operator"
    tx.run(
        "event_insert",
        estate_id=estate_id,
        at=int(now),
        actor_kind=kind,
        actor_id=actor_id,
        actor_name=name,
        action=action.value,
        pool_id=pool_id,
        subject_id=subject_id,
        details=json.dumps(details, separators=(",", ":"), sort_keys=True),
    )


ORDERS = ("asc", "desc")
"""``asc``: oldest first (the API's default); ``desc``: newest first (the console's)."""
_ABOVE_EVERY_ID = 2**63 - 1


def page(
    tx: Tx,
    estate_id: str,
    *,
    after: int | None = None,
    limit: int = 100,
    order: str = "asc",
    pool_id: str | None = None,
    action: str | None = None,
) -> dict[str, Any]:
    """One page of events in ``order``, from just past the cursor ``after``; ``next`` continues.

    The cursor is an event id and "past" follows the order: oldest first, the page holds
    ids above it; newest first, ids below it. Without a cursor the page starts at the
    oldest or the newest event. ``next`` is the last id of this page when more follow, so
    passing it back as ``after`` (with the same order and filters) walks the whole log once.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    filters = {"estate_id": estate_id, "limit": limit + 1, "pool_id": pool_id, "action": action}
    if order == "desc":
        rows = tx.all("events_page_desc", before=_ABOVE_EVERY_ID if after is None else after, **filters)
    else:
        rows = tx.all("events_page", after=after or 0, **filters)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": str(r["id"]),
            "at": format_ts(r["at"]),
            "actor": {"kind": r["actor_kind"], "id": r["actor_id"], "name": r["actor_name"]},
            "action": r["action"],
            "pool_id": r["pool_id"],
            "subject_id": r["subject_id"],
            "details": json.loads(r["details"]),
        }
        for r in rows
    ]
    return {"items": items, "next": str(rows[-1]["id"]) if more and rows else None}
