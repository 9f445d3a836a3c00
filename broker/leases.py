"""Leases: an encoder's seats of one licence type, taken from its server's pool.

Every function here runs inside one store transaction. Seats come from the pool's
grantable purchases of the type, earliest expiry first, split across purchases when
needed; a shrink gives back the latest-expiring first. ``holdings.leased`` is moved in
the same transaction with a guarded UPDATE, and the database's CHECK
(``leased <= allocated``) backs it up: no path can grant a seat that is not there.

A lease's ``exp`` never passes the earliest grace end of its purchases, so a lease is
never active beyond its licences' grace. A lease past ``exp`` is *lapsed* lazily: any
write that decides capacity in a pool first calls ``lapse_due`` for that pool, and a
background reaper sweeps the rest so the audit log records every lapse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker import audit, policies, purchases
from broker.errors import (
    Inconsistent,
    LeaseRace,
    NotFound,
    PoolExhausted,
    Unauthenticated,
    constraint_means,
)
from broker.principal import Principal
from broker.push import events as push
from broker.seats import Take, plan_seats
from broker.store.base import Row, Tx
from broker.webhooks import events as webhook_events
from shared.secret import Secret
from shared.timefmt import format_ts
from shared.wire import Lease

_STATE_RANK = {"valid": 0, "expiring": 1, "expired": 2, "ended": 3, "on_hold": 4}


@dataclass(frozen=True)
class Grant:
    """What the API needs to sign and render a lease."""

    lease: Row
    seats: list[Row]
    issued_at: int
    created: bool
    state: str
    lease_seconds: int

    def claims(self) -> dict[str, Any]:
        lease = self.lease
        return {
            "sub": lease["encoder"],
            "lid": lease["id"],
            "est": lease["estate_id"],
            "pool": lease["pool_id"],
            "srv": lease["server_id"],
            "lt": lease["licence_type"],
            "n": lease["count"],
            "iat": self.issued_at,
            "nbf": self.issued_at,
            "exp": lease["expires_at"],
        }

    def render(self, token: str) -> dict[str, Any]:
        lease = self.lease
        lifetime = lease["expires_at"] - self.issued_at
        return Lease(
            id=lease["id"],
            token=Secret(token),
            encoder=lease["encoder"],
            licence_type=lease["licence_type"],
            count=lease["count"],
            pool_id=lease["pool_id"],
            expires_at=lease["expires_at"],
            renew_after=self.issued_at + lifetime // 3,
            lease_seconds=self.lease_seconds,
            server_time=self.issued_at,
            state=self.state,
            seats=tuple(
                {
                    "purchase_id": s["purchase_id"],
                    "sales_order": s["sales_order"],
                    "count": s["count"],
                    "expires_at": format_ts(s["expires_at"]),
                    "state": purchases.state(s, self.issued_at),
                }
                for s in self.seats
            ),
        ).to_json()


@dataclass(frozen=True)
class Gone:
    """The lease cannot be renewed; the API answers 410 with this reason."""

    reason: str  # released | revoked | lapsed


def _end(
    tx: Tx,
    now: float,
    lease: Row,
    state: str,
    reason: str,
    actor: Principal | None,
    *,
    override: bool = False,
    seats: list[Row] | None = None,
) -> None:
    """End the lease: its seats go back, held for its encoder inside its soft-lock window
    unless ``override`` (an admin's), which also frees what was held for it before.
    ``seats``: the lease's seats if this transaction has read them already."""
    if tx.run("lease_end", lease_id=lease["id"], state=state, now=int(now), reason=reason) != 1:
        return
    returned = []
    for seat in seats if seats is not None else tx.all("lease_seats", lease_id=lease["id"]):
        tx.run("holding_unlease", pool_id=lease["pool_id"], purchase_id=seat["purchase_id"], count=seat["count"])
        returned.append((seat["purchase_id"], seat["count"]))
    policy: dict[str, Any] = {}
    if override:
        policy["override_soft_lock"] = True
        policy["soft_lock_freed"] = policies.release_held(tx, now, lease["pool_id"], lease["encoder"])
    else:
        held = policies.hold_back(tx, now, lease, returned)
        if held:
            policy["soft_locked"] = held
    audit.record(
        tx,
        now,
        actor,
        lease["estate_id"],
        audit.Action(f"lease.{state}"),
        pool_id=lease["pool_id"],
        subject_id=lease["id"],
        server_id=lease["server_id"],
        encoder=lease["encoder"],
        licence_type=lease["licence_type"],
        count=lease["count"],
        reason=reason,
        **policy,
    )
    if state == "lapsed":
        webhook_events.emit(
            tx,
            now,
            lease["estate_id"],
            webhook_events.LEASE_LAPSED,
            {
                "lease_id": lease["id"],
                "pool_id": lease["pool_id"],
                "server_id": lease["server_id"],
                "encoder": lease["encoder"],
                "licence_type": lease["licence_type"],
                "count": lease["count"],
                "expired_at": format_ts(now),
            },
        )


def lapse_due(tx: Tx, now: float, pool_id: str) -> int:
    """Lapse the pool's leases past ``exp``, so ``holdings.leased`` counts only live seats."""
    return _lapse(tx, tx.all("leases_due_in_pool", pool_id=pool_id, now=int(now)))


def _lapse(tx: Tx, due: list[Row]) -> int:
    for lease in due:
        _end(tx, lease["expires_at"], lease, "lapsed", "expired", None)
    return len(due)


def reap(tx: Tx, now: float, limit: int = 500) -> int:
    """Lapse up to ``limit`` leases past ``exp`` anywhere (the background reaper)."""
    due = tx.all("leases_due", now=int(now), limit=limit)
    for lease in due:
        _end(tx, lease["expires_at"], lease, "lapsed", "expired", None)
    return len(due)


def _lease_seats(tx: Tx, lease_id: str, pool_id: str, encoder: str, plan: list[Take]) -> None:
    """Move the planned seats from the holdings (and the encoder's held seats) to the lease."""
    for take in plan:
        pid = take.row["purchase_id"]
        _lease_holding(tx, pool_id, pid, take.n)
        tx.run("lease_seat_add", lease_id=lease_id, purchase_id=pid, pool_id=pool_id, count=take.n)
        if take.own:
            policies.unlock(tx, pool_id, encoder, pid, take.held, take.own)


def _lease_holding(tx: Tx, pool_id: str, purchase_id: str, n: int) -> None:
    """Count ``n`` more seats of the holding as leased, or raise ``PoolExhausted``.

    ``broker.seats.plan_seats`` saw them free; the guarded UPDATE and the holdings CHECK refuse them
    anyway if they are gone by now (taken by a writer running beside this one).
    """
    gone = PoolExhausted("The free licences were taken at the same moment; try again.", requested=n)
    with constraint_means(lambda: gone, "holdings_leased"):
        changed = tx.run("holding_lease", pool_id=pool_id, purchase_id=purchase_id, count=n)
    if changed != 1:
        raise gone


def _take(
    tx: Tx,
    now: float,
    server: Principal,
    pool: Row,
    lease: Row,
    licence_type: str,
    n: int,
    *,
    after: int,
    replacing: int,
) -> None:
    """Add ``n`` seats to the lease (``broker.seats.plan_seats``), or raise ``PoolExhausted``."""
    if n <= 0:
        return
    plan = plan_seats(tx, now, pool, server, lease["encoder"], licence_type, n, after=after, replacing=replacing)
    _lease_seats(tx, lease["id"], pool["pool_id"], lease["encoder"], plan)


def _give_back(tx: Tx, now: float, lease: Row, seats: list[Row], n: int) -> None:
    """Return ``n`` seats, latest-expiring first (held for the encoder inside its window)."""
    returned = []
    for seat in reversed(seats):
        if n <= 0:
            break
        back = min(n, seat["count"])
        _drop_seat(tx, lease, seat, back)
        returned.append((seat["purchase_id"], back))
        n -= back
    policies.hold_back(tx, now, lease, returned)


def _drop_seat(tx: Tx, lease: Row, seat: Row, n: int) -> None:
    tx.run("holding_unlease", pool_id=lease["pool_id"], purchase_id=seat["purchase_id"], count=n)
    if n >= seat["count"]:
        tx.run("lease_seat_delete", lease_id=lease["id"], purchase_id=seat["purchase_id"])
    else:
        tx.run("lease_seat_set", lease_id=lease["id"], purchase_id=seat["purchase_id"], count=seat["count"] - n)


def _describe(now: float, lease: Row, seats: list[Row], lease_seconds: int) -> tuple[Row, int]:
    """The lease as it is once granted ``seats`` now: its count and ``exp`` set."""
    exp = min(int(now) + lease_seconds, min(purchases.grace_end(s) for s in seats))
    count = sum(s["count"] for s in seats)
    return {**lease, "count": count, "expires_at": exp, "renewed_at": int(now)}, exp


def _grant(now: float, lease: Row, seats: list[Row], lease_seconds: int, created: bool) -> Grant:
    state = max((purchases.state(s, now) for s in seats), key=_STATE_RANK.__getitem__)
    return Grant(lease, seats, int(now), created, state, lease_seconds)


def _finish(tx: Tx, now: float, lease: Row, seats: list[Row] | None, lease_seconds: int, created: bool) -> Grant:
    """Set ``exp`` from the pool's lifetime and the seats' grace, and describe the lease.

    ``seats`` are the lease's seats as they stand, or None when this transaction has
    changed them (they are read again).
    """
    if seats is None:
        seats = tx.all("lease_seats", lease_id=lease["id"])
    if not seats:
        raise Inconsistent(f"lease {lease['id']} holds no seats")
    lease, exp = _describe(now, lease, seats, lease_seconds)
    tx.run(
        "lease_update",
        lease_id=lease["id"],
        count=lease["count"],
        licence_type=lease["licence_type"],
        now=int(now),
        expires_at=exp,
    )
    return _grant(now, lease, seats, lease_seconds, created)


def acquire(
    tx: Tx,
    now: float,
    server: Principal,
    encoder: str,
    licence_type: str,
    count: int,
    encoder_kind: str = "hardware",
) -> Grant | None:
    """Make (server, encoder) hold exactly ``count`` seats of ``licence_type``.

    Returns the grant, or None when ``count`` is 0 (released). All or nothing: on
    ``PoolExhausted`` (or ``ServerLimit``) the lease stays as it was. The encoder's lease,
    if it has one, is resized, or replaced when the type differs; otherwise a new lease is
    granted. ``encoder_kind`` picks the soft-lock window an encoder's first grant in the
    pool starts (``broker.policies``).
    """
    pool, lease, due = _grant_context(tx, now, server, encoder)
    tx.run("server_seen", server_id=server.server_id, now=int(now))
    _lapse(tx, due)  # as lapse_due(pool): the pool's leases past exp, read with the binding
    if lease is not None and any(d["id"] == lease["id"] for d in due):
        lease = None  # the encoder's own lease was among them: lapsed just now
    if count == 0:
        if lease is not None:
            _end(tx, now, lease, "released", "released", server)
        return None
    if lease is None:
        return _grant_new(tx, now, server, pool, encoder, licence_type, count, encoder_kind)
    if lease["licence_type"] != licence_type:
        return _change_type(tx, now, server, pool, lease, licence_type, count)
    return _resize(tx, now, server, pool, lease, count)


def _grant_new(
    tx: Tx,
    now: float,
    server: Principal,
    pool: Row,
    encoder: str,
    licence_type: str,
    count: int,
    encoder_kind: str,
) -> Grant:
    """A new lease of ``count`` seats, written once, as it will stand.

    Its seats are chosen first, so its expiry is known before the insert, and nothing
    written is read back. The encoder's first grant in the pool starts its window.
    """
    pool_id = pool["pool_id"]
    plan = plan_seats(tx, now, pool, server, encoder, licence_type, count, after=count, replacing=0)
    seats = [
        {
            "purchase_id": t.row["purchase_id"],
            "count": t.n,
            "sales_order": t.row["sales_order"],
            "licence_type": licence_type,
            "expires_at": t.row["expires_at"],
            "status": t.row["status"],
            "held_at": t.row["held_at"],
        }
        for t in plan
    ]
    lease_id = tx.new_id("lse")
    fresh = {
        "id": lease_id,
        "estate_id": server.estate_id,
        "pool_id": pool_id,
        "server_id": server.server_id,
        "encoder": encoder,
        "licence_type": licence_type,
        "state": "active",
        "created_at": int(now),
        "end_reason": None,
    }
    fresh, _ = _describe(now, fresh, seats, pool["lease_seconds"])
    _insert(tx, now, fresh)
    _lease_seats(tx, lease_id, pool_id, encoder, plan)
    if not pool["window_started"]:  # read with the binding; nothing since starts a window
        policies.start_window(tx, now, pool_id, encoder, encoder_kind)
    grant = _grant(now, fresh, seats, pool["lease_seconds"], created=True)
    audit.record(
        tx,
        now,
        server,
        server.estate_id,
        audit.Action.LEASE_GRANTED,
        pool_id=pool_id,
        subject_id=lease_id,
        encoder=encoder,
        licence_type=licence_type,
        before=0,
        after=count,
    )
    return grant


def _insert(tx: Tx, now: float, lease: Row) -> None:
    """Insert the new active lease; ``leases_encoder`` (one active lease per server and
    encoder) answers ``LeaseRace`` if another writer granted the encoder one meanwhile."""
    race = LeaseRace(
        f"Another request for encoder {lease['encoder']!r} was granted a lease at the same moment; "
        "send this one again to resize that lease.",
        encoder=lease["encoder"],
    )
    with constraint_means(lambda: race, "leases_encoder"):
        tx.run(
            "lease_insert",
            id=lease["id"],
            estate_id=lease["estate_id"],
            pool_id=lease["pool_id"],
            server_id=lease["server_id"],
            encoder=lease["encoder"],
            licence_type=lease["licence_type"],
            count=lease["count"],
            now=int(now),
            expires_at=lease["expires_at"],
        )


def _change_type(
    tx: Tx,
    now: float,
    server: Principal,
    pool: Row,
    lease: Row,
    licence_type: str,
    count: int,
) -> Grant:
    """Replace the lease's seats with ``count`` seats of another type, atomically.

    The old seats go back first (they are of the other type, so this frees none that
    could be taken); if the new ones are not there, ``PoolExhausted`` rolls the whole
    transaction back, and the lease keeps its old seats.
    """
    returned = []
    for seat in tx.all("lease_seats", lease_id=lease["id"]):
        _drop_seat(tx, lease, seat, seat["count"])
        returned.append((seat["purchase_id"], seat["count"]))
    policies.hold_back(tx, now, lease, returned)
    tx.run(
        "lease_update",
        lease_id=lease["id"],
        count=count,
        licence_type=licence_type,
        now=int(now),
        expires_at=lease["expires_at"],
    )
    # The lease's row already counts ``count`` of the new type (updated above).
    _take(tx, now, server, pool, lease, licence_type, count, after=count, replacing=count)
    return _changed(tx, now, server, pool, lease, {**lease, "licence_type": licence_type}, None)


def _resize(tx: Tx, now: float, server: Principal, pool: Row, lease: Row, count: int) -> Grant:
    """Grow or shrink the lease to ``count`` seats of its type.

    Seats past their grace are dropped (ended, not given back: never held) and replaced
    from valid licences; growth takes the encoder's held seats, then the earliest-expiring
    free seats; a shrink gives back the latest-expiring first.
    """
    seats = tx.all("lease_seats", lease_id=lease["id"])
    held = 0
    dropped = False
    for seat in list(seats):
        if now >= purchases.grace_end(seat):
            _drop_seat(tx, lease, seat, seat["count"])
            seats.remove(seat)
            dropped = True
        else:
            held += seat["count"]
    if count > held:
        _take(tx, now, server, pool, lease, lease["licence_type"], count - held, after=count, replacing=lease["count"])
    elif count < held:
        _give_back(tx, now, lease, seats, held - count)
    touched = dropped or count != held
    return _changed(tx, now, server, pool, lease, lease, None if touched else seats)


def _changed(
    tx: Tx,
    now: float,
    server: Principal,
    pool: Row,
    before: Row,
    lease: Row,
    seats: list[Row] | None,
) -> Grant:
    """Finish an existing lease after a change, auditing it if type or count moved.

    ``seats`` as ``_finish`` takes them: None when this transaction changed them.
    """
    grant = _finish(tx, now, lease, seats, pool["lease_seconds"], created=False)
    was = {"licence_type": before["licence_type"], "count": before["count"]}
    now_is = {"licence_type": grant.lease["licence_type"], "count": grant.lease["count"]}
    if now_is != was:
        audit.record(
            tx,
            now,
            server,
            server.estate_id,
            audit.Action.LEASE_CHANGED,
            pool_id=pool["pool_id"],
            subject_id=lease["id"],
            encoder=lease["encoder"],
            before=was,
            after=now_is,
        )
    return grant


_LEASE = (
    "id",
    "estate_id",
    "pool_id",
    "server_id",
    "encoder",
    "licence_type",
    "count",
    "state",
    "created_at",
    "renewed_at",
    "expires_at",
    "end_reason",
)
_DUE = ("id", "estate_id", "pool_id", "server_id", "encoder", "licence_type", "count", "expires_at")


def _bound(binding: Row | None) -> Row:
    """The server's pool as the database has it now, not as the principal cache does.

    A server token's identity is cached for minutes in each process of each replica; a
    server removed or rebound through another one must not take seats on a stale binding.
    """
    if binding is None:
        raise Unauthenticated("The token is unknown or has been revoked.")
    return binding


def _server_ids(server: Principal) -> tuple[str, str]:
    if not (server.server_id and server.estate_id):
        raise Unauthenticated("This route needs a server token.")
    return server.server_id, server.estate_id


def _grant_context(tx: Tx, now: float, server: Principal, encoder: str) -> tuple[Row, Row | None, list[Row]]:
    """The server's pool binding (``_bound``), the encoder's active lease, and the pool's
    leases past ``exp``: one statement (``grant_context``) instead of three."""
    server_id, estate_id = _server_ids(server)
    rows = tx.all("grant_context", server_id=server_id, estate_id=estate_id, encoder=encoder, now=int(now))
    binding = _bound(next((r for r in rows if r["part"] == "binding"), None))
    pool = {
        "pool_id": binding["binding_pool_id"],
        "lease_seconds": binding["lease_seconds"],
        "soft_lock_hardware": binding["soft_lock_hardware"],
        "soft_lock_container": binding["soft_lock_container"],
        "window_started": bool(binding["window_started"]),
        "has_limits": bool(binding["has_limits"]),
    }
    lease = {k: binding[k] for k in _LEASE} if binding["id"] is not None else None
    due = [{k: r[k] for k in _DUE} for r in rows if r["part"] == "due"]
    return pool, lease, due


def _own_lease(tx: Tx, server: Principal, lease_id: str) -> tuple[Row, Row, list[Row]]:
    """The server's lease, the server's pool binding (``_bound``) and the lease's seats
    (as ``lease_seats`` reads them): one statement (``lease_context``) instead of three."""
    server_id, estate_id = _server_ids(server)
    rows = tx.all("lease_context", server_id=server_id, estate_id=estate_id, lease_id=lease_id)
    first = _bound(rows[0] if rows else None)
    if first["id"] is None:
        raise NotFound("No such lease for this server.")
    binding = {"pool_id": first["binding_pool_id"], "lease_seconds": first["lease_seconds"]}
    lease = {k: first[k] for k in _LEASE}
    seats = [
        {
            "purchase_id": r["purchase_id"],
            "count": r["seat_count"],
            "sales_order": r["sales_order"],
            "licence_type": r["seat_licence_type"],
            "expires_at": r["seat_expires_at"],
            "status": r["seat_status"],
            "held_at": r["seat_held_at"],
        }
        for r in rows
        if r["purchase_id"] is not None
    ]
    return lease, binding, seats


def _gone(tx: Tx, now: float, server: Principal, lease: Row, reason: str) -> Gone:
    """A refused renewal, audited: the lease was released, revoked or has lapsed."""
    audit.record(
        tx,
        now,
        server,
        lease["estate_id"],
        audit.Action.LEASE_RENEWAL_REFUSED,
        pool_id=lease["pool_id"],
        subject_id=lease["id"],
        reason=reason,
    )
    return Gone(reason)


def renew(tx: Tx, now: float, server: Principal, lease_id: str) -> Grant | Gone:
    """A new token and a later expiry, or ``Gone`` (the change is still committed)."""
    lease, binding, seats = _own_lease(tx, server, lease_id)
    tx.run("server_seen", server_id=server.server_id, now=int(now))
    if lease["state"] != "active":
        return _gone(tx, now, server, lease, "lapsed" if lease["state"] == "lapsed" else lease["state"])
    if now >= lease["expires_at"] or any(now >= purchases.grace_end(s) for s in seats):
        _end(tx, now, lease, "lapsed", "expired" if now >= lease["expires_at"] else "grace_ended", None, seats=seats)
        return _gone(tx, now, server, lease, "lapsed")
    if binding["pool_id"] == lease["pool_id"]:
        lease_seconds = binding["lease_seconds"]  # the same pool row, read a moment ago
    else:
        pool = tx.one("pool_by_id", pool_id=lease["pool_id"], estate_id=lease["estate_id"])
        if pool is None:
            raise Inconsistent(f"active lease {lease_id} is in pool {lease['pool_id']}, which is gone")
        lease_seconds = pool["lease_seconds"]
    return _finish(tx, now, lease, seats, lease_seconds, created=False)


def release(tx: Tx, now: float, server: Principal, lease_id: str) -> None:
    """The agent gives the lease back. Idempotent."""
    lease, _, seats = _own_lease(tx, server, lease_id)
    if lease["state"] == "active":
        _end(tx, now, lease, "released", "released", server, seats=seats)


def revoke(
    tx: Tx, now: float, actor: Principal, estate_id: str, lease_id: str, *, override_soft_lock: bool = False
) -> None:
    """An admin frees the lease at once. Idempotent.

    Its seats are held for its encoder inside the encoder's soft-lock window, unless
    ``override_soft_lock``: then they, and whatever was held for the encoder before, are
    free at once (for a lease already ended, only the latter), and the event says so.
    """
    lease = tx.one("lease_of_estate", lease_id=lease_id, estate_id=estate_id)
    if lease is None:
        raise NotFound("No such lease in this estate.")
    if lease["state"] == "active":
        _end(tx, now, lease, "revoked", "revoked_by_admin", actor, override=override_soft_lock)
        push.record_lease_ended(tx, now, lease, "revoked", "revoked_by_admin")
    elif override_soft_lock:
        freed = policies.release_held(tx, now, lease["pool_id"], lease["encoder"])
        if freed:
            audit.record(
                tx,
                now,
                actor,
                estate_id,
                audit.Action.SOFT_LOCK_OVERRIDDEN,
                pool_id=lease["pool_id"],
                subject_id=lease["id"],
                encoder=lease["encoder"],
                soft_lock_freed=freed,
            )


def revoke_all_of_server(
    tx: Tx, now: float, actor: Principal, server_id: str, *, override_soft_lock: bool = False
) -> list[str]:
    """End every active lease of the server; returns their ids."""
    leases = tx.all("leases_active_of_server", server_id=server_id)
    for lease in leases:
        state = "lapsed" if lease["expires_at"] <= now else "revoked"
        _end(tx, now, lease, state, "server_removed", actor, override=override_soft_lock)
    return [lease["id"] for lease in leases]


def list_live(
    tx: Tx,
    now: float,
    estate_id: str,
    *,
    pool_id: str | None,
    server_id: str | None,
    encoder: str | None,
    after: str,
    limit: int,
) -> dict[str, Any]:
    rows = tx.all(
        "leases_of_estate",
        estate_id=estate_id,
        now=int(now),
        after=after,
        pool_id=pool_id,
        server_id=server_id,
        encoder=encoder,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": r["id"],
            "pool_id": r["pool_id"],
            "server_id": r["server_id"],
            "server_name": r["server_name"],
            "encoder": r["encoder"],
            "licence_type": r["licence_type"],
            "count": r["count"],
            "created_at": format_ts(r["created_at"]),
            "renewed_at": format_ts(r["renewed_at"]),
            "expires_at": format_ts(r["expires_at"]),
            "encoder_kind": r["encoder_kind"],
            "soft_lock_until": (
                format_ts(r["soft_lock_until"])
                if r["soft_lock_until"] is not None and r["soft_lock_until"] > now
                else None
            ),
        }
        for r in rows
    ]
    return {"items": items, "next": rows[-1]["id"] if more and rows else None}
