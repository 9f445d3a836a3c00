"""Purchases (sales-order lines) and the states derived from their expiry and hold.

    valid ──(30 days before expiry)──▶ expiring ──(expiry)──▶ expired ──(+30 days)──▶ ended
      ▲                                                          (grace: renewals only)
      └──── lift hold ──── on_hold (grace counted from the hold)

Seats are granted only from a *grantable* purchase (valid or expiring). Existing leases
keep renewing until the purchase's *grace end*; no token outlives it.
"""

from __future__ import annotations

from typing import Any

from broker import audit, paging
from broker.errors import Inconsistent, NotFound, ValidationFailed
from broker.principal import Principal
from broker.push import events as push
from broker.store.base import Row, Tx
from shared.timefmt import format_ts

DAY = 86400
EXPIRING_WINDOW = 30 * DAY
GRACE = 30 * DAY


def state(p: Row, now: float) -> str:
    if p["status"] == "on_hold":
        return "on_hold"
    if now >= p["expires_at"] + GRACE:
        return "ended"
    if now >= p["expires_at"]:
        return "expired"
    if now >= p["expires_at"] - EXPIRING_WINDOW:
        return "expiring"
    return "valid"


def grantable(p: Row, now: float) -> bool:
    """New seats may come from this purchase now."""
    return bool(p["status"] == "valid" and now < p["expires_at"])


def grace_end(p: Row) -> int:
    """The instant after which no seat of this purchase is renewed."""
    end = int(p["expires_at"]) + GRACE
    if p["status"] == "on_hold" and p["held_at"] is not None:
        end = min(end, int(p["held_at"]) + GRACE)
    return end


def render(p: Row, now: float) -> dict[str, Any]:
    return {
        "id": p["id"],
        "sales_order": p["sales_order"],
        "licence_type": p["licence_type"],
        "quantity": p["quantity"],
        "expires_at": format_ts(p["expires_at"]),
        "status": p["status"],
        "state": state(p, now),
        "grace_ends_at": format_ts(grace_end(p)),
    }


def record(
    tx: Tx,
    now: float,
    actor: Principal,
    estate_id: str,
    *,
    sales_order: str,
    licence_type: str,
    quantity: int,
    expires_at: int,
) -> dict[str, Any]:
    """Record a purchase; all of it lands in the estate's Default Pool."""
    default = tx.one("default_pool", estate_id=estate_id)
    if default is None:
        raise NotFound("No such estate.")
    purchase_id = tx.new_id("pur")
    tx.run(
        "purchase_insert",
        id=purchase_id,
        estate_id=estate_id,
        sales_order=sales_order,
        licence_type=licence_type,
        quantity=quantity,
        expires_at=expires_at,
        status="valid",
        held_at=None,
        now=int(now),
    )
    tx.run("holding_add", pool_id=default["id"], purchase_id=purchase_id, count=quantity)
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.PURCHASE_RECORDED,
        pool_id=default["id"],
        subject_id=purchase_id,
        sales_order=sales_order,
        licence_type=licence_type,
        quantity=quantity,
        expires_at=format_ts(expires_at),
    )
    row = tx.one("purchase_by_id", purchase_id=purchase_id, estate_id=estate_id)
    if row is None:
        raise Inconsistent(f"purchase {purchase_id}, inserted in this transaction, is not there")
    return render(row, now)


def update(
    tx: Tx,
    now: float,
    actor: Principal,
    estate_id: str,
    purchase_id: str,
    *,
    status: str | None,
    expires_at: int | None,
) -> dict[str, Any]:
    """Put on hold, lift a hold, or change the expiry."""
    row = get(tx, estate_id, purchase_id)
    new_status = status or row["status"]
    held_at = row["held_at"]
    if new_status == "on_hold" and row["status"] != "on_hold":
        held_at = int(now)
    elif new_status == "valid":
        held_at = None
    new_expiry = row["expires_at"] if expires_at is None else expires_at
    if new_expiry <= row["created_at"] - 366 * DAY:
        raise ValidationFailed([{"field": "expires_at", "message": "is implausibly early"}])
    tx.run(
        "purchase_update",
        purchase_id=purchase_id,
        estate_id=estate_id,
        status=new_status,
        held_at=held_at,
        expires_at=new_expiry,
    )
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.PURCHASE_UPDATED,
        subject_id=purchase_id,
        sales_order=row["sales_order"],
        before={"status": row["status"], "expires_at": format_ts(row["expires_at"])},
        after={"status": new_status, "expires_at": format_ts(new_expiry)},
    )
    if (new_status, new_expiry) != (row["status"], row["expires_at"]):
        push.record_purchase_changed(tx, now, purchase_id)
    return render(get(tx, estate_id, purchase_id), now)


def get(tx: Tx, estate_id: str, purchase_id: str) -> Row:
    row = tx.one("purchase_by_id", purchase_id=purchase_id, estate_id=estate_id)
    if row is None:
        raise NotFound("No such purchase in this estate.")
    return row


def list_all(tx: Tx, now: float, estate_id: str, *, after: str = "", limit: int | None = None) -> paging.Page:
    """The estate's purchases, soonest expiry first, a page at a time."""
    return paging.fetch(
        tx, "purchases_of_estate", lambda r: render(r, now), after=after, limit=limit, estate_id=estate_id
    )
