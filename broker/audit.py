"""The audit log: every change, appended in the same transaction as the change.

Each estate's events form a hash chain, so that an edited, deleted or reordered row
shows: an event's ``hash`` is SHA-256 over the ASCII bytes of the estate's previous
``hash`` (``GENESIS`` for its first event) followed by the event's canonical JSON
(``canonical``: the event as ``GET /v1/estates/{estate}/events`` shows it, without
``id``, ``hash`` and ``prev_hash``). docs/design.md gives the same
definition ("The audit chain") and a recipe to verify a chain by hand; ``walk``
verifies it, for ``tenure-broker check`` (``broker.books``) and ``GET …/events/chain``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from broker.errors import Inconsistent
from broker.principal import Principal
from broker.store.base import Row, Tx
from shared.timefmt import format_ts

PAGE_MAX = 500
GENESIS = "0" * 64
"""The ``prev_hash`` of an estate's first event."""
# One encoder, made once: json.dumps with any argument set builds a new one every call.
_COMPACT = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
HASHED = ("action", "actor", "at", "details", "pool_id", "subject_id")
"""The members of an event, as the API shows it, that its hash covers: all but ``id``
(the database's row number, which the chain's order stands for) and the links."""


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
    SERVER_LIMITS_SET = "server.limits_set"
    SOFT_LOCK_OVERRIDDEN = "soft_lock.overridden"
    LEASE_GRANTED = "lease.granted"
    LEASE_CHANGED = "lease.changed"
    LEASE_RELEASED = "lease.released"
    LEASE_REVOKED = "lease.revoked"
    LEASE_LAPSED = "lease.lapsed"
    LEASE_RENEWAL_REFUSED = "lease.renewal_refused"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_DELETED = "webhook.deleted"
    WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated"  # noqa: S105 - an action name, not a secret
    WEBHOOK_TESTED = "webhook.tested"


def canonical(event: Mapping[str, Any]) -> bytes:
    """The bytes of ``event`` that its hash covers: its ``HASHED`` members as compact JSON
    with sorted keys, every character outside printable ASCII escaped (``\\uXXXX``, as
    Python's ``json.dumps`` writes by default), so the bytes are plain ASCII."""
    return _COMPACT.encode({k: event[k] for k in HASHED}).encode("ascii")


def link(prev_hash: str, event: Mapping[str, Any]) -> str:
    """The ``hash`` of ``event`` following an event whose hash is ``prev_hash``."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(event)).hexdigest()


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """An ``events`` row as the API shows it (``hash`` and ``prev_hash`` as stored)."""
    return {
        "id": str(row["id"]),
        "at": format_ts(row["at"]),
        "actor": {"kind": row["actor_kind"], "id": row["actor_id"], "name": row["actor_name"]},
        "action": row["action"],
        "pool_id": row["pool_id"],
        "subject_id": row["subject_id"],
        "details": json.loads(row["details"]),
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }


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
    """Append one event to the estate's chain. ``actor`` None means the broker itself (a
    lapse, a reaper). The estate's last hash is read and the new one written in this same
    transaction, which the store runs as if alone, so two writers never fork a chain."""
    if estate_id is None:
        raise Inconsistent(f"a {action.value} event names no estate: every event is on an estate's chain")
    name: str | None
    if actor is None:
        kind, actor_id, name = "system", None, "broker"
    else:
        kind, actor_id = actor.kind, actor.actor_id
        name = actor.name if actor.kind != "operator" else "operator"
    row = {
        "at": int(now),
        "actor_kind": kind,
        "actor_id": actor_id,
        "actor_name": name,
        "action": action.value,
        "pool_id": pool_id,
        "subject_id": subject_id,
        "details": _COMPACT.encode(details),
    }
    # One statement: the estate's last hash read and the link hashed inside the insert.
    added = tx.one("event_append", estate_id=estate_id, genesis=GENESIS, canonical=_canonical_new(row), **row)
    if added is None or added["hash"] is None:
        # The estate's newest event predates the chain: chain its backlog, this one last.
        _chain(tx, tx.all("events_unchained_of_estate", estate_id=estate_id), {})


def _canonical_new(row: Mapping[str, Any]) -> bytes:
    """``canonical(view(row))`` for a row about to be inserted, without parsing back the
    details just serialised: they are already in canonical form (sorted keys, compact,
    ASCII), so they are spliced in between the members that sort before and after them.
    Half the chain's cost on the write path; a test holds it to ``canonical``."""
    before = _COMPACT.encode(
        {
            "action": row["action"],
            "actor": {"kind": row["actor_kind"], "id": row["actor_id"], "name": row["actor_name"]},
            "at": format_ts(row["at"]),
        }
    )
    after = _COMPACT.encode({"pool_id": row["pool_id"], "subject_id": row["subject_id"]})
    return f'{before[:-1]},"details":{row["details"]},{after[1:]}'.encode("ascii")


def chain_backlog(tx: Tx, limit: int = 2000) -> int:
    """Chain up to ``limit`` events that have no hash yet (those written before the
    chain existed), oldest first, each onto its estate's chain; returns how many.

    The broker calls it at start, until it returns 0.
    """
    rows = tx.all("events_unchained", limit=limit)
    _chain(tx, rows, {})
    return len(rows)


def _chain(tx: Tx, rows: list[Row], heads: dict[str, str]) -> dict[str, str]:
    """Hash ``rows`` (unchained events in id order) onto their estates' chains; the
    estates' new heads."""
    for r in rows:
        estate_id = r["estate_id"]
        prev = heads.get(estate_id)
        if prev is None:
            before = tx.one("event_hash_before", estate_id=estate_id, before=r["id"])
            prev = GENESIS if before is None or before["hash"] is None else str(before["hash"])
        heads[estate_id] = link(prev, view(r))
        tx.run("event_chain", id=r["id"], prev_hash=prev, hash=heads[estate_id])
    return heads


CHAIN_PAGE = 2000


@dataclass(frozen=True)
class Walk:
    """How far an estate's chain was found whole, and where it broke if it did."""

    checked: int
    """Events found whole in this walk."""
    last_id: int | None
    """The last of them (or, with none, the event the walk started after)."""
    last_hash: str | None
    broken_at: int | None
    reason: str | None
    """Why the link at ``broken_at`` is broken, in words."""
    more: bool
    """Events remain past ``last_id``: walk on with ``after=last_id``."""


def walk(tx: Tx, estate_id: str, *, after: int = 0, limit: int | None = None) -> Walk:
    """Verify the estate's chain from just past event ``after``, up to ``limit`` events
    (all when None), stopping at the first broken link.

    In id order, each event must name the hash before it as ``prev_hash`` (``GENESIS``
    for the estate's first) and carry the hash of its own contents: an edited row fails
    the second, a deleted or moved one the first, at the event after it. The walk starts
    from the stored hash of the estate's event at or before ``after``, which an earlier
    walk up to there found whole.
    """
    start = tx.one("event_chain_start", estate_id=estate_id, after=after) if after else None
    before: int | None = start["id"] if start else None
    expected = str(start["hash"]) if start and start["hash"] else GENESIS
    checked, cursor = 0, after
    while limit is None or checked < limit:
        size = CHAIN_PAGE if limit is None else min(CHAIN_PAGE, limit - checked)
        rows = tx.all("events_chain_page", estate_id=estate_id, after=cursor, limit=size)
        for row in rows:
            broken = _link_broken(row, expected, before)
            if broken:
                return Walk(checked, before, expected if before else None, row["id"], broken, True)
            expected, before, checked = str(row["hash"]), row["id"], checked + 1
        if len(rows) < size:
            return Walk(checked, before, expected if before else None, None, None, False)
        cursor = rows[-1]["id"]
    more = tx.one("events_chain_page", estate_id=estate_id, after=cursor, limit=1) is not None
    return Walk(checked, before, expected if before else None, None, None, more)


def _link_broken(row: Row, expected: str, before: int | None) -> str | None:
    if row["hash"] is None or row["prev_hash"] is None:
        if before is None:
            return (
                "it is not chained yet (written before the audit log was chained; "
                "a broker of this version chains such events when it starts)"
            )
        return f"it has no hash, yet event {before} before it has one (the row was edited)"
    if row["prev_hash"] != expected:
        if before is None:
            return (
                "it is the estate's first event, yet its prev_hash is not the chain's start "
                "(events before it were deleted)"
            )
        return (
            f"its prev_hash is not the hash of event {before} (an event between them was deleted, or rows were moved)"
        )
    try:
        own = link(row["prev_hash"], view(row))
    except (ValueError, TypeError, OverflowError):  # details that are not JSON, a time that is no time
        return "its contents cannot be read (the row was edited)"
    if own != row["hash"]:
        return "its hash does not match its contents (the row was edited)"
    return None


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
    items = [view(r) for r in rows]
    return {"items": items, "next": str(rows[-1]["id"]) if more and rows else None}
