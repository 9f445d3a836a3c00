"""Licence policies: the anti-cycling soft-lock, and per-server limits and reservations.

All are off by default, and a pool without them behaves as if this module did not exist.
Every function runs inside the store transaction of the grant, move or release it
governs, so a policy decision and the change it allows commit together (or not at all)
and the books' invariants hold with policies on, across replicas.

Soft-lock. A pool sets a window per encoder kind (``soft_lock_seconds``: hardware and
container, 0 = off). An encoder's window starts at its first grant in the pool (with the
kind it said then) and ends ``started_at + the pool's current setting for that kind``: a
shorter setting frees at once what it no longer covers. Seats the encoder gives back
inside its window (release, shrink, ``count: 0``, a type change, lapse, a revocation
without ``override_soft_lock``) are held for it in ``soft_locks``, per purchase: not
available to other encoders, not movable, and the first seats it gets when it asks again.

Limits. ``server_limits`` holds, per server and licence type, ``max`` (a cap on the seats
its encoders hold together) and ``reserved`` (seats of its pool kept for it: a seat goes
to another server, or out of the pool by a move, only while enough free seats are left to
cover every other server's unused reservation). The reservations of a pool never exceed
its holding of the type.

Seat arithmetic for one pool and type, for encoder E on server X:

    free(h)      = allocated(h) - leased(h) - soft-locked(h, any encoder)
    own(h)       = soft-locked(h, E)                      (grantable purchases only)
    unused(S)    = max(0, reserved(S) - held by S's encoders)
    available    = sum own(h) + max(0, sum free(h) - sum over S != X of unused(S))
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from broker import audit
from broker.errors import LicencesInUse, ReservationExceedsPool, ServerLimit, ValidationFailed
from broker.principal import Principal
from broker.store.base import Row, Tx
from shared.timefmt import format_ts
from shared.words import count as words_count

KINDS = ("hardware", "container")
MAX_WINDOW_SECONDS = 90 * 86400
# The reference product's values, offered by the console as a preset.
REFERENCE_WINDOWS = {"hardware": 45 * 86400, "container": 30 * 60}


def windows_on(pool: Row) -> bool:
    """Whether any soft-lock window of the pool is set (else no seat can be held)."""
    return bool(pool["soft_lock_hardware"] or pool["soft_lock_container"])


def window_seconds(pool: Row) -> dict[str, int]:
    return {"hardware": pool["soft_lock_hardware"], "container": pool["soft_lock_container"]}


# -- soft-lock ---------------------------------------------------------------


def start_window(tx: Tx, now: float, pool_id: str, encoder: str, kind: str) -> None:
    """Note the encoder's first grant in the pool (a later one changes nothing)."""
    tx.run("window_start", pool_id=pool_id, encoder=encoder, kind=kind, now=int(now))


def hold_back(tx: Tx, at: float, lease: Row, returned: Iterable[tuple[str, int]]) -> int:
    """Hold the seats ``lease`` gives back at ``at`` for its encoder, if its window is
    open then; returns how many are held."""
    returned = [(pid, n) for pid, n in returned if n > 0]
    if not returned:
        return 0
    window = tx.one("window_of_encoder", pool_id=lease["pool_id"], encoder=lease["encoder"])
    if window is None or at >= window["started_at"] + window["seconds"]:
        return 0
    for purchase_id, n in returned:
        tx.run(
            "soft_lock_add",
            pool_id=lease["pool_id"],
            encoder=lease["encoder"],
            purchase_id=purchase_id,
            count=n,
            lease_id=lease["id"],
        )
    return sum(n for _, n in returned)


def release_held(tx: Tx, now: float, pool_id: str, encoder: str) -> int:
    """Free at once the seats held for the encoder in the pool (an admin's override)."""
    held: int = sum(r["count"] for r in live_locks(tx, now, pool_id) if r["encoder"] == encoder)
    tx.run("soft_locks_clear_encoder", pool_id=pool_id, encoder=encoder)
    return held


def live_locks(tx: Tx, now: float, pool_id: str) -> list[Row]:
    """The pool's held seats whose window is open now, earliest-expiring purchase first."""
    return tx.all("soft_locks_live_of_pool", pool_id=pool_id, now=int(now))


def unlock(tx: Tx, pool_id: str, encoder: str, purchase_id: str, held: int, n: int) -> None:
    """The encoder takes back ``n`` of the ``held`` seats held for it on the purchase."""
    if n >= held:
        tx.run("soft_lock_delete", pool_id=pool_id, encoder=encoder, purchase_id=purchase_id)
    else:
        tx.run("soft_lock_set", pool_id=pool_id, encoder=encoder, purchase_id=purchase_id, count=held - n)


def set_windows(
    tx: Tx, now: float, pool: Row, hardware: int | None, container: int | None
) -> tuple[dict[str, int], dict[str, int]]:
    """Set the pool's windows; (before, after). Rows whose window ended under the old
    setting, or ends under the new one, are dropped, so that no later setting brings back
    seats that others may have taken meanwhile."""
    before = window_seconds(pool)
    after = {
        "hardware": before["hardware"] if hardware is None else hardware,
        "container": before["container"] if container is None else container,
    }
    tx.run("soft_locks_forget_ended", pool_id=pool["id"], now=int(now))
    tx.run(
        "pool_soft_lock_set",
        pool_id=pool["id"],
        estate_id=pool["estate_id"],
        hardware=after["hardware"],
        container=after["container"],
    )
    tx.run("soft_locks_forget_ended", pool_id=pool["id"], now=int(now))
    return before, after


def forget_pool(tx: Tx, pool_id: str) -> None:
    """A deleted pool's windows and held seats (its holdings go home)."""
    tx.run("soft_locks_clear_pool", pool_id=pool_id)
    tx.run("encoder_windows_clear_pool", pool_id=pool_id)


def render_locks(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Held seats per encoder and licence type, for pool views."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["encoder"], r["licence_type"])
        item = out.setdefault(
            key,
            {
                "encoder": r["encoder"],
                "kind": r["kind"],
                "licence_type": r["licence_type"],
                "count": 0,
                "until": format_ts(r["until"]),
                "lease_id": r["lease_id"],
            },
        )
        item["count"] += r["count"]
    return sorted(out.values(), key=lambda i: (i["until"], i["encoder"], i["licence_type"]))


# -- limits and reservations -------------------------------------------------


@dataclass
class Limits:
    """The limits of a pool's servers for one licence type, with what each holds."""

    rows: list[Row] = field(default_factory=list)

    def of(self, server_id: str) -> Row | None:
        return next((r for r in self.rows if r["server_id"] == server_id), None)

    def unused_reserved(self, except_server: str | None = None) -> int:
        return sum(max(0, r["reserved"] - r["in_use"]) for r in self.rows if r["server_id"] != except_server)

    def reserved(self) -> int:
        return sum(r["reserved"] for r in self.rows)


def limits_in_pool(tx: Tx, now: float, pool_id: str) -> dict[str, Limits]:
    """Per licence type, the limits of the servers bound to the pool."""
    by_type: dict[str, Limits] = defaultdict(Limits)
    for r in tx.all("limits_in_pool", pool_id=pool_id, now=int(now)):
        by_type[r["licence_type"]].rows.append(r)
    return by_type


def check_max(limits: Limits, server_id: str, licence_type: str, held_elsewhere: int, after: int, more: int) -> None:
    """Refuse ``more`` seats that would take the server past its ``max`` of the type.

    ``held_elsewhere`` is what the server's other encoders hold of it, ``after`` what this
    encoder will hold. A server already over a lowered ``max`` may still shrink.
    """
    row = limits.of(server_id)
    if row is None or row["max_seats"] is None or more <= 0:
        return
    if held_elsewhere + after > row["max_seats"]:
        raise ServerLimit(
            f"The server may hold at most {words_count(row['max_seats'], licence_type + ' licence')}; "
            f"its encoders would hold {held_elsewhere + after}.",
            licence_type=licence_type,
            max=row["max_seats"],
            in_use=held_elsewhere + after - more,
            requested=more,
        )


def _reservations_fit(licence_type: str, reserved: int, holding: int) -> None:
    if reserved > holding:
        raise ReservationExceedsPool(
            f"Reservations of {licence_type} would come to {reserved}, but the pool holds "
            f"{words_count(holding, licence_type + ' licence')}.",
            licence_type=licence_type,
            reserved=reserved,
            holding=holding,
        )


def holding_by_type(tx: Tx, pool_id: str) -> dict[str, Row]:
    return {r["licence_type"]: r for r in tx.all("pool_allocated_by_type", pool_id=pool_id)}


def check_move_out(tx: Tx, now: float, pool_id: str, leaving: dict[str, int], locked: dict[str, int]) -> None:
    """A move takes ``leaving`` seats per type out of the pool: refuse it if the pool's
    reservations would then exceed its holding, or if the free seats left could not cover
    the servers' unused reservations (reserved seats do not move)."""
    if not leaving:
        return
    limits = limits_in_pool(tx, now, pool_id)
    held = holding_by_type(tx, pool_id)
    for licence_type, n in leaving.items():
        lim = limits.get(licence_type)
        if lim is None or not lim.rows:
            continue
        row = held.get(licence_type)
        allocated = (row["allocated"] if row else 0) - n
        _reservations_fit(licence_type, lim.reserved(), allocated)
        free = allocated - (row["leased"] if row else 0) - locked.get(licence_type, 0)
        unused = lim.unused_reserved()
        if free < unused:
            raise LicencesInUse(
                f"{words_count(unused, licence_type + ' licence')} of the pool are reserved for its servers; "
                f"the move would leave {max(free, 0)} free.",
                items=[],
                licence_type=licence_type,
                reserved=unused,
            )


def check_rebind(tx: Tx, now: float, server_id: str, pool_id: str) -> None:
    """The server's reservations must fit the pool it is bound to next."""
    mine = tx.all("limits_of_server", server_id=server_id)
    if not any(r["reserved"] for r in mine):
        return
    limits = limits_in_pool(tx, now, pool_id)
    held = holding_by_type(tx, pool_id)
    for r in mine:
        if r["reserved"]:
            others = sum(x["reserved"] for x in limits[r["licence_type"]].rows if x["server_id"] != server_id)
            row = held.get(r["licence_type"])
            _reservations_fit(r["licence_type"], others + r["reserved"], row["allocated"] if row else 0)


def set_limits(
    tx: Tx,
    now: float,
    actor: Principal,
    server: Row,
    changes: dict[str, dict[str, int] | None],
) -> None:
    """Set (or, with None or ``{}``, clear) the server's limits per licence type, audited."""
    errors = []
    for licence_type, change in changes.items():
        if change and "max" in change and change.get("reserved", 0) > change["max"]:
            errors.append({"field": f"limits.{licence_type}.reserved", "message": "must not exceed max"})
    if errors:
        raise ValidationFailed(errors)
    before = {r["licence_type"]: _limit(r) for r in tx.all("limits_of_server", server_id=server["id"])}
    limits = limits_in_pool(tx, now, server["pool_id"])
    held = holding_by_type(tx, server["pool_id"])
    for licence_type, change in sorted(changes.items()):
        if not change:
            tx.run("server_limit_delete", server_id=server["id"], licence_type=licence_type)
            continue
        reserved = change.get("reserved", 0)
        if reserved:
            others = sum(r["reserved"] for r in limits[licence_type].rows if r["server_id"] != server["id"])
            row = held.get(licence_type)
            _reservations_fit(licence_type, others + reserved, row["allocated"] if row else 0)
        tx.run(
            "server_limit_set",
            server_id=server["id"],
            licence_type=licence_type,
            max_seats=change.get("max"),
            reserved=reserved,
        )
    after = {r["licence_type"]: _limit(r) for r in tx.all("limits_of_server", server_id=server["id"])}
    if after != before:
        audit.record(
            tx,
            now,
            actor,
            server["estate_id"],
            audit.Action.SERVER_LIMITS_SET,
            pool_id=server["pool_id"],
            subject_id=server["id"],
            name=server["name"],
            before=before,
            after=after,
        )


def _limit(r: Row) -> dict[str, Any]:
    return {"max": r["max_seats"], "reserved": r["reserved"]}


def limits_of_server(tx: Tx, server_id: str) -> dict[str, dict[str, Any]]:
    return {r["licence_type"]: _limit(r) for r in tx.all("limits_of_server", server_id=server_id)}


def locked_by_purchase(rows: Iterable[Row]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r["purchase_id"]] += r["count"]
    return out
