"""Estates (customer accounts) and their admins."""

from __future__ import annotations

from typing import Any

from broker import audit, codes, paging
from broker.errors import Conflict, Forbidden, NotFound
from broker.ids import new_token, token_hash
from broker.principal import Principal
from broker.store.base import Tx
from shared.timefmt import format_ts

DEFAULT_POOL_NAME = "Default Pool"


class PrimaryAdmin(Conflict):
    code, title = "primary_admin", "The primary admin cannot be removed"


def create(tx: Tx, now: float, actor: Principal, name: str, admin_name: str, lease_seconds: int) -> dict[str, Any]:
    """A new estate with its Default Pool and primary admin, in one transaction."""
    estate_id, pool_id, admin_id = tx.new_id("est"), tx.new_id("pool"), tx.new_id("adm")
    token = new_token("adm")
    tx.run("estate_insert", id=estate_id, name=name, now=int(now))
    tx.run(
        "pool_insert",
        id=pool_id,
        estate_id=estate_id,
        name=DEFAULT_POOL_NAME,
        name_key=DEFAULT_POOL_NAME.casefold(),
        is_default=1,
        lease_seconds=lease_seconds,
        now=int(now),
    )
    tx.run(
        "admin_insert",
        id=admin_id,
        estate_id=estate_id,
        name=admin_name,
        token_hash=token_hash(token),
        is_primary=1,
        now=int(now),
    )
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.ESTATE_CREATED,
        subject_id=estate_id,
        name=name,
        admin_name=admin_name,
        default_pool_id=pool_id,
    )
    return {
        "id": estate_id,
        "name": name,
        "default_pool_id": pool_id,
        "admin_id": admin_id,
        "admin_token": token,
    }


def get(tx: Tx, estate_id: str) -> dict[str, Any]:
    row = tx.one("estate_by_id", estate_id=estate_id)
    if row is None:
        raise NotFound("No such estate.")
    return row


def add_admin(tx: Tx, now: float, actor: Principal, estate_id: str, name: str) -> dict[str, Any]:
    _require_primary(actor)
    get(tx, estate_id)
    admin_id, token = tx.new_id("adm"), new_token("adm")
    tx.run(
        "admin_insert",
        id=admin_id,
        estate_id=estate_id,
        name=name,
        token_hash=token_hash(token),
        is_primary=0,
        now=int(now),
    )
    audit.record(tx, now, actor, estate_id, audit.Action.ADMIN_ADDED, subject_id=admin_id, name=name)
    return {"id": admin_id, "name": name, "primary": False, "token": token}


def remove_admin(tx: Tx, now: float, actor: Principal, estate_id: str, admin_id: str) -> None:
    """Remove a non-primary admin: its token stops working and its live codes are revoked."""
    _require_primary(actor)
    row = tx.one("admin_by_id", admin_id=admin_id, estate_id=estate_id)
    if row is None:
        raise NotFound("No such admin in this estate.")
    if row["is_primary"]:
        raise PrimaryAdmin("The estate's primary admin cannot be removed.")
    tx.run("admin_remove", admin_id=admin_id, estate_id=estate_id, now=int(now))
    revoked = codes.revoke_of_admin(tx, now, actor, estate_id, admin_id)
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.ADMIN_REMOVED,
        subject_id=admin_id,
        name=row["name"],
        codes_revoked=revoked,
    )


def list_admins(tx: Tx, estate_id: str, *, after: str = "", limit: int | None = None) -> paging.Page:
    """The estate's admins, the primary first, a page at a time."""
    get(tx, estate_id)
    return paging.fetch(
        tx,
        "admins_of_estate",
        lambda r: {
            "id": r["id"],
            "name": r["name"],
            "primary": bool(r["is_primary"]),
            "created_at": format_ts(r["created_at"]),
        },
        after=after,
        limit=limit,
        estate_id=estate_id,
    )


def _require_primary(actor: Principal) -> None:
    if actor.kind == "admin" and not actor.primary:
        raise Forbidden("Only the estate's primary admin can add or remove admins.")
