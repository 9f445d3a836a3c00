"""Where a grant's seats come from: the plan of an acquire or grow, policies applied.

Reads only: ``broker.leases`` moves the planned seats in the same transaction, behind a
guarded UPDATE and the holdings CHECK. Seats come from the pool's grantable purchases of
the type, earliest expiry first; with the licence policies (``broker.policies``) the
encoder's own held seats come first, and seats held for other encoders or covering other
servers' unused reservations are not free.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from broker import policies
from broker.errors import LicenceTypeNotInPool, PoolExhausted
from broker.principal import Principal
from broker.store.base import Row, Tx
from shared.words import count


@dataclass(frozen=True)
class Take:
    """Seats a grant takes from one holding: ``n`` in all, ``own`` of them the seats held
    for this encoder (of ``held`` held for it there)."""

    row: Row
    n: int
    own: int = 0
    held: int = 0


def plan_seats(
    tx: Tx,
    now: float,
    pool: Row,
    server: Principal,
    encoder: str,
    licence_type: str,
    n: int,
    *,
    after: int,
    replacing: int,
) -> list[Take]:
    """Where ``n`` more seats would come from, policies applied. Reads only.

    The encoder's own held seats come first, then free seats, each earliest expiry
    first; seats held for other encoders, and those needed to cover other servers' unused
    reservations, are not free. ``after`` is what the encoder will hold of the type,
    ``replacing`` what its lease counts of it now (for the server's ``max``).

    Raises ``ServerLimit`` past the server's ``max``; ``PoolExhausted`` when the pool has
    fewer than ``n`` available to this encoder; ``LicenceTypeNotInPool`` when it holds none
    of the type at all (in use, expired or on hold included): more licences would not
    help, another type or pool would.
    """
    pool_id = pool["pool_id"]
    candidates = tx.all("grantable_holdings", pool_id=pool_id, licence_type=licence_type, now=int(now))
    mine: dict[str, int] = defaultdict(int)
    others: dict[str, int] = defaultdict(int)
    if policies.windows_on(pool):
        for held in tx.all(
            "soft_locks_live_of_type", pool_id=pool_id, licence_type=licence_type, encoder=encoder, now=int(now)
        ):
            mine[held["purchase_id"]] = int(held["mine"])
            others[held["purchase_id"]] = int(held["others"])
    # ``has_limits``: whether any server of the pool has limits, read with the binding.
    limits = (policies.limits_in_pool(tx, now, pool_id).get(licence_type) if pool["has_limits"] else None) or (
        policies.Limits()
    )
    own_row = limits.of(server.server_id or "")
    held_elsewhere = (own_row["in_use"] if own_row else 0) - replacing
    policies.check_max(limits, server.server_id or "", licence_type, held_elsewhere, after, n)
    own = {c["purchase_id"]: min(mine[c["purchase_id"]], c["allocated"] - c["leased"]) for c in candidates}
    free = {
        c["purchase_id"]: max(0, c["allocated"] - c["leased"] - mine[c["purchase_id"]] - others[c["purchase_id"]])
        for c in candidates
    }
    reserved = limits.unused_reserved(except_server=server.server_id)
    open_seats = max(0, sum(free.values()) - reserved)
    available = sum(own.values()) + open_seats
    if available < n:
        require_type(tx, pool_id, licence_type)
        locked = sum(others[c["purchase_id"]] for c in candidates)
        raise PoolExhausted(
            f"The pool has {count(available, licence_type + ' licence')} available; {n} more were asked for."
            + (f" {count(locked, 'seat')} are soft-locked for other encoders." if locked else "")
            + (f" {count(reserved, 'seat')} are reserved for other servers." if reserved else ""),
            available=available,
            requested=n,
            licence_type=licence_type,
            soft_locked=locked,
            reserved=reserved,
        )
    taking = {c["purchase_id"]: 0 for c in candidates}
    own_taken = dict(taking)
    need = n
    for c in candidates:
        take = min(need, own[c["purchase_id"]])
        own_taken[c["purchase_id"]] = take
        need -= take
    for c in candidates:
        take = min(need, free[c["purchase_id"]], open_seats)
        taking[c["purchase_id"]] = take
        need -= take
        open_seats -= take
    plan = []
    for c in candidates:
        pid = c["purchase_id"]
        if taking[pid] + own_taken[pid] > 0:
            plan.append(Take(c, taking[pid] + own_taken[pid], own_taken[pid], mine[pid]))
    return plan


def require_type(tx: Tx, pool_id: str, licence_type: str) -> None:
    types = [r["licence_type"] for r in tx.all("licence_types_of_pool", pool_id=pool_id)]
    if licence_type not in types:
        held = ", ".join(types) if types else "no licences at all"
        raise LicenceTypeNotInPool(
            f"The pool holds no {licence_type} licences; it holds {held}.",
            licence_type=licence_type,
            types=types,
        )
