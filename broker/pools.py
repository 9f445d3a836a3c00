"""Pools, their holdings of purchases, and moves of unused licences between them.

Seat accounting: ``holdings.allocated`` is how many seats of a purchase a pool holds
(summed over pools it is the purchase's quantity: invariant 1) and ``holdings.leased``
counts the seats of active leases. A lease past its ``exp`` still counts in ``leased``
until it is lapsed; write paths call ``leases.lapse_due`` before any capacity decision
and read paths subtract those dead seats, so capacity counts only live leases at every
instant.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from broker import audit, leases, paging, policies, purchases
from broker.errors import (
    Inconsistent,
    LicencesInUse,
    NameTaken,
    NotFound,
    PoolNotEmpty,
    ValidationFailed,
    constraint_means,
)
from broker.principal import Principal
from broker.push import events as push
from broker.store.base import Row, Tx
from shared import words
from shared.timefmt import format_ts


class DefaultPoolFixed(PoolNotEmpty):
    code, title = "default_pool", "The Default Pool cannot be deleted"


def get(tx: Tx, estate_id: str, pool_id: str) -> Row:
    row = tx.one("pool_by_id", pool_id=pool_id, estate_id=estate_id)
    if row is None:
        raise NotFound("No such pool in this estate.")
    return row


def _check_name(tx: Tx, estate_id: str, name: str, except_id: str | None = None) -> str:
    key = name.strip().casefold()
    if not key:
        raise ValidationFailed([{"field": "name", "message": "must not be blank"}])
    clash = tx.one("pool_by_name_key", estate_id=estate_id, name_key=key)
    if clash is not None and clash["id"] != except_id:
        raise _name_taken(name)
    return key


def _name_taken(name: str) -> NameTaken:
    return NameTaken(f"A pool named {name!r} already exists in this estate.", field="name")


def _insert(tx: Tx, now: float, pool_id: str, estate_id: str, name: str, key: str, lease_seconds: int) -> None:
    """Insert the pool row; the name's unique index (``pools_name``) answers ``NameTaken``
    if another writer took the name after ``_check_name`` looked."""
    with constraint_means(lambda: _name_taken(name), "pools_name"):
        tx.run(
            "pool_insert",
            id=pool_id,
            estate_id=estate_id,
            name=name,
            name_key=key,
            is_default=0,
            lease_seconds=lease_seconds,
            now=int(now),
        )


def create(
    tx: Tx,
    now: float,
    actor: Principal,
    estate_id: str,
    name: str,
    lease_seconds: int,
    moves: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A new pool, optionally filled from the Default Pool in the same transaction."""
    default = tx.one("default_pool", estate_id=estate_id)
    if default is None:
        raise NotFound("No such estate.")
    key = _check_name(tx, estate_id, name)
    pool_id = tx.new_id("pool")
    _insert(tx, now, pool_id, estate_id, name, key, lease_seconds)
    audit.record(tx, now, actor, estate_id, audit.Action.POOL_CREATED, pool_id=pool_id, subject_id=pool_id, name=name)
    if moves:
        move(tx, now, actor, estate_id, default["id"], pool_id, moves)
    return view(tx, now, estate_id, pool_id)


def update(
    tx: Tx,
    now: float,
    actor: Principal,
    estate_id: str,
    pool_id: str,
    *,
    name: str | None,
    lease_seconds: int | None,
    soft_lock_seconds: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Rename the pool, or set its lease lifetime or soft-lock windows (``broker.policies``)."""
    row = get(tx, estate_id, pool_id)
    new_name = row["name"] if name is None else name
    key = _check_name(tx, estate_id, new_name, except_id=pool_id)
    new_seconds = row["lease_seconds"] if lease_seconds is None else lease_seconds
    with constraint_means(lambda: _name_taken(new_name), "pools_name"):
        tx.run(
            "pool_update", pool_id=pool_id, estate_id=estate_id, name=new_name, name_key=key, lease_seconds=new_seconds
        )
    before: dict[str, Any] = {"name": row["name"], "lease_seconds": row["lease_seconds"]}
    after: dict[str, Any] = {"name": new_name, "lease_seconds": new_seconds}
    if soft_lock_seconds is not None:
        before["soft_lock_seconds"], after["soft_lock_seconds"] = policies.set_windows(
            tx, now, row, soft_lock_seconds.get("hardware"), soft_lock_seconds.get("container")
        )
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.POOL_UPDATED,
        pool_id=pool_id,
        subject_id=pool_id,
        before=before,
        after=after,
    )
    if new_seconds != row["lease_seconds"]:
        push.record_pool_changed(tx, now, pool_id, new_seconds)
    return view(tx, now, estate_id, pool_id)


def delete(tx: Tx, now: float, actor: Principal, estate_id: str, pool_id: str) -> None:
    """Delete a custom pool with no servers and no live leases; holdings go home."""
    row = get(tx, estate_id, pool_id)
    if row["is_default"]:
        raise DefaultPoolFixed("The Default Pool cannot be deleted.")
    leases.lapse_due(tx, now, pool_id)
    counts = tx.one("pool_counts", pool_id=pool_id, now=int(now))
    if counts is None:
        raise Inconsistent("pool_counts returned no row")
    if counts["servers"] or counts["leases"]:
        raise PoolNotEmpty(
            f"The pool still has {words.count(counts['servers'], 'server or domain', 'servers or domains')} and "
            f"{words.count(counts['leases'], 'lease')}; remove or rebind them first.",
            servers=counts["servers"],
            leases=counts["leases"],
        )
    default = tx.one("default_pool", estate_id=estate_id)
    if default is None:
        raise NotFound("No such estate.")
    returned = {h["purchase_id"]: h["allocated"] for h in tx.all("holdings_of_pool", pool_id=pool_id)}
    tx.run("holdings_move_all_to", from_pool=pool_id, to_pool=default["id"])
    tx.run("holdings_clear", pool_id=pool_id)
    policies.forget_pool(tx, pool_id)
    # A live code of a deleted pool would bind a new server to a pool that is gone.
    tx.run("codes_revoke_of_pool", pool_id=pool_id)
    tx.run("pool_delete", pool_id=pool_id, estate_id=estate_id, now=int(now))
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.POOL_DELETED,
        pool_id=pool_id,
        subject_id=pool_id,
        name=row["name"],
        returned_to_default=returned,
    )


def move(
    tx: Tx,
    now: float,
    actor: Principal,
    estate_id: str,
    from_pool: str,
    to_pool: str,
    items: Iterable[dict[str, Any]],
) -> dict[str, Any]:
    """Move unused seats per purchase, all or nothing.

    Seats held for an encoder (soft-locked) are not unused; nor are the seats that cover
    the source pool's servers' unused reservations, which must also still fit its holding.
    """
    src, dst = get(tx, estate_id, from_pool), get(tx, estate_id, to_pool)
    if src["id"] == dst["id"]:
        raise ValidationFailed([{"field": "to_pool", "message": "must differ from from_pool"}])
    wanted: dict[str, int] = defaultdict(int)
    for item in items:
        wanted[item["purchase_id"]] += item["count"]
    leases.lapse_due(tx, now, from_pool)
    locks = policies.live_locks(tx, now, from_pool) if policies.windows_on(src) else []
    locked = policies.locked_by_purchase(locks)
    locked_by_type: dict[str, int] = defaultdict(int)
    for lock in locks:
        locked_by_type[lock["licence_type"]] += lock["count"]
    leaving: dict[str, int] = defaultdict(int)
    lacking = []
    before: dict[str, Any] = {}
    for purchase_id, count in wanted.items():
        purchase = purchases.get(tx, estate_id, purchase_id)
        leaving[purchase["licence_type"]] += count
        holding = tx.one("holding_get", pool_id=from_pool, purchase_id=purchase_id)
        allocated = holding["allocated"] if holding else 0
        unused = allocated - (holding["leased"] if holding else 0) - locked.get(purchase_id, 0)
        target = tx.one("holding_get", pool_id=to_pool, purchase_id=purchase_id)
        before[purchase_id] = {"from_allocated": allocated, "to_allocated": target["allocated"] if target else 0}
        if unused < count:
            lacking.append(
                {
                    "purchase_id": purchase_id,
                    "sales_order": purchase["sales_order"],
                    "requested": count,
                    "unused": unused,
                    "lacking": count - unused,
                }
            )
    if lacking:
        first = lacking[0]
        raise LicencesInUse(
            f"Sales order {first['sales_order']} has only {words.count(first['unused'], 'unused licence')} "
            f"in {src['name']!r}; {first['requested']} were asked for.",
            items=lacking,
        )
    policies.check_move_out(tx, now, from_pool, leaving, locked_by_type)
    for purchase_id, count in wanted.items():
        _take_unused(tx, from_pool, purchase_id, count)
        tx.run("holding_add", pool_id=to_pool, purchase_id=purchase_id, count=count)
    move_id = tx.new_id("mov")
    moved = [{"purchase_id": p, "count": c} for p, c in wanted.items()]
    tx.run(
        "move_insert",
        id=move_id,
        estate_id=estate_id,
        from_pool=from_pool,
        to_pool=to_pool,
        items=json.dumps(moved),
        actor=actor.actor_id or actor.kind,
        now=int(now),
    )
    after = {
        p: {"from_allocated": before[p]["from_allocated"] - c, "to_allocated": before[p]["to_allocated"] + c}
        for p, c in wanted.items()
    }
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.LICENCES_MOVED,
        pool_id=to_pool,
        subject_id=move_id,
        from_pool=from_pool,
        to_pool=to_pool,
        items=moved,
        before=before,
        after=after,
    )
    return {"id": move_id, "from_pool": from_pool, "to_pool": to_pool, "items": moved, "at": format_ts(now)}


def _take_unused(tx: Tx, pool_id: str, purchase_id: str, count: int) -> None:
    """Take ``count`` unused seats of the holding, or raise ``LicencesInUse``.

    ``move`` counted them first; the guarded UPDATE and the holdings CHECK refuse them
    anyway if they are gone by now (a lease taken by a writer running beside this one).
    """
    in_use = LicencesInUse(
        f"{words.count(count, 'unused licence')} of purchase {purchase_id} are no longer there; try again.",
        items=[{"purchase_id": purchase_id, "requested": count}],
    )
    with constraint_means(lambda: in_use, "holdings_leased", "holdings_allocated"):
        changed = tx.run("holding_take", pool_id=pool_id, purchase_id=purchase_id, count=count)
    if changed != 1:
        raise in_use


# -- views -------------------------------------------------------------------


def _counts() -> dict[str, int]:
    return {"allocated": 0, "in_use": 0, "available": 0, "soft_locked": 0, "reserved": 0}


def _render(
    pool: Row,
    holdings: list[Row],
    dead: dict[str, int],
    revoked_unexpired: int,
    now: float,
    locks: list[Row],
    limits: list[Row],
) -> dict[str, Any]:
    """The pool's counts. ``available`` leaves out seats held for encoders (soft-locked);
    ``reserved`` is what the pool's servers have reserved (each server's unused part is
    not available to the others)."""
    totals = _counts()
    by_type: dict[str, dict[str, int]] = {}
    locked = policies.locked_by_purchase(locks)
    rendered = []
    for h in holdings:
        in_use = h["leased"] - dead.get(h["purchase_id"], 0)
        held = locked.get(h["purchase_id"], 0)
        free = max(0, h["allocated"] - in_use - held) if purchases.grantable(h, now) else 0
        per = by_type.setdefault(h["licence_type"], _counts())
        for bucket in (totals, per):
            bucket["allocated"] += h["allocated"]
            bucket["in_use"] += in_use
            bucket["available"] += free
            bucket["soft_locked"] += held
        rendered.append(
            {
                "purchase_id": h["purchase_id"],
                "sales_order": h["sales_order"],
                "licence_type": h["licence_type"],
                "expires_at": format_ts(h["expires_at"]),
                "state": purchases.state(h, now),
                "allocated": h["allocated"],
                "in_use": in_use,
                "soft_locked": held,
                "unused": h["allocated"] - in_use - held,
            }
        )
    for r in limits:
        per = by_type.setdefault(r["licence_type"], _counts())
        per["reserved"] += r["reserved"]
        totals["reserved"] += r["reserved"]
    return {
        "id": pool["id"],
        "name": pool["name"],
        "is_default": bool(pool["is_default"]),
        "lease_seconds": pool["lease_seconds"],
        "soft_lock_seconds": policies.window_seconds(pool),
        "created_at": format_ts(pool["created_at"]),
        **totals,
        "revoked_unexpired": revoked_unexpired,
        "by_type": by_type,
        "holdings": rendered,
        "soft_locks": policies.render_locks(locks),
        "limits": [
            {
                "server_id": r["server_id"],
                "server_name": r["server_name"],
                "licence_type": r["licence_type"],
                "max": r["max_seats"],
                "reserved": r["reserved"],
                "in_use": r["in_use"],
            }
            for r in limits
        ],
    }


def view(tx: Tx, now: float, estate_id: str, pool_id: str) -> dict[str, Any]:
    """One pool with its counts, from queries of that pool alone (whatever the estate's size)."""
    return _view_of(tx, now, get(tx, estate_id, pool_id))


def _view_of(tx: Tx, now: float, pool: Row) -> dict[str, Any]:
    holdings = tx.all("holdings_of_pool", pool_id=pool["id"])
    dead = {d["purchase_id"]: d["n"] for d in tx.all("dead_seats_of_pool", pool_id=pool["id"], now=int(now))}
    revoked = tx.one("revoked_unexpired_of_pool", pool_id=pool["id"], now=int(now))
    locks = policies.live_locks(tx, now, pool["id"]) if policies.windows_on(pool) else []
    limits = tx.all("limits_in_pool", pool_id=pool["id"], now=int(now))
    return _render(pool, holdings, dead, revoked["n"] if revoked else 0, now, locks, limits)


def page(tx: Tx, now: float, estate_id: str, *, after: str = "", limit: int) -> paging.Page:
    """A page of the estate's pools with their counts, each from queries of that pool alone."""
    return paging.fetch(tx, "pools_page", lambda p: _view_of(tx, now, p), after=after, limit=limit, estate_id=estate_id)


def list_views(tx: Tx, now: float, estate_id: str) -> list[dict[str, Any]]:
    """Every pool of the estate with its counts, in five indexed queries and one per pool."""
    pools = tx.all("pools_of_estate", estate_id=estate_id)
    holdings: dict[str, list[Row]] = defaultdict(list)
    for h in tx.all("holdings_of_estate", estate_id=estate_id):
        holdings[h["pool_id"]].append(h)
    dead: dict[str, dict[str, int]] = defaultdict(dict)
    for d in tx.all("dead_seats_of_estate", estate_id=estate_id, now=int(now)):
        dead[d["pool_id"]][d["purchase_id"]] = d["n"]
    revoked = {r["pool_id"]: r["n"] for r in tx.all("revoked_unexpired_of_estate", estate_id=estate_id, now=int(now))}
    locks: dict[str, list[Row]] = defaultdict(list)
    for lock in tx.all("soft_locks_live_of_estate", estate_id=estate_id, now=int(now)):
        locks[lock["pool_id"]].append(lock)
    return [
        _render(
            p,
            holdings[p["id"]],
            dead[p["id"]],
            revoked.get(p["id"], 0),
            now,
            locks[p["id"]],
            tx.all("limits_in_pool", pool_id=p["id"], now=int(now)),
        )
        for p in pools
    ]


def summary(tx: Tx, now: float, estate_id: str) -> dict[str, Any]:
    """Per licence type across the estate: total, in use, available, soft-locked (held for
    encoders), expiring soon, and unavailable (expired, ended or on hold)."""
    by_type: dict[str, dict[str, int]] = {}
    for pool in list_views(tx, now, estate_id):
        for h in pool["holdings"]:
            t = by_type.setdefault(
                h["licence_type"],
                {"total": 0, "in_use": 0, "available": 0, "soft_locked": 0, "expiring": 0, "unavailable": 0},
            )
            t["total"] += h["allocated"]
            t["in_use"] += h["in_use"]
            t["soft_locked"] += h["soft_locked"]
            if h["state"] in ("valid", "expiring"):
                t["available"] += h["unused"]
            else:
                t["unavailable"] += h["unused"]
            if h["state"] == "expiring":
                t["expiring"] += h["allocated"]
    return {"by_type": by_type}
