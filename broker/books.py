"""Proving the books: every invariant recomputed from the rows (``tenure-broker check``).

``check(tx, now)`` is a plain function of one read transaction, so any store runs it on
one consistent snapshot (``store.read``) while brokers keep writing beside it. It
returns one line per finding, each naming its estate first, and an empty list when the
books balance (docs/design.md, "Invariants"), no row is orphaned, and every estate's
audit chain is whole (``broker.audit``). It writes nothing.

What it cannot see: seats leased from a purchase after its hold was lifted and put back
(the rows keep only the latest hold), and the newest events deleted from the end of a
chain, which leave a shorter chain that is whole: compare its head with a hash noted
elsewhere (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from broker import audit, purchases
from broker.store.base import Row, Tx
from shared.timefmt import format_ts
from shared.words import count


@dataclass(frozen=True)
class Report:
    findings: list[str]
    estates: int
    purchases: int
    active_leases: int
    events: int


def check(tx: Tx, now: float) -> Report:
    """Every finding, books first, then orphans, then each estate's audit chain."""
    counts = tx.one("books_counts") or {}
    findings = [*_books(tx, int(now)), *_orphans(tx)]
    for estate in tx.all("books_estates"):
        broken = chain_break(tx, estate["id"])
        if broken:
            findings.append(f"estate {estate['id']}: {broken}")
    return Report(
        findings,
        int(counts.get("estates") or 0),
        int(counts.get("purchases") or 0),
        int(counts.get("active_leases") or 0),
        int(counts.get("events") or 0),
    )


def _when(value: object) -> str:
    """A stored time as the API writes it, or as stored when it is no time (a row edited by hand)."""
    try:
        return format_ts(value)  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return repr(value)


def _in(estate_id: str | None) -> str:
    return f"estate {estate_id}" if estate_id else "no estate"


def _books(tx: Tx, now: int) -> Iterator[str]:
    for p in tx.all("books_purchase_totals"):
        yield (
            f"{_in(p['estate_id'])}: purchase {p['id']} ({p['sales_order']}): its holdings add up to "
            f"{p['held']}, its quantity is {p['quantity']} (invariant 1)"
        )
    for h in tx.all("books_holdings_bounds"):
        yield (
            f"{_in(h['estate_id'])}: pool {h['pool_id']} holds purchase {h['purchase_id']} with "
            f"{h['leased']} leased of {h['allocated']} allocated (invariant 2)"
        )
    for h in tx.all("books_holdings_leased"):
        yield (
            f"{_in(h['estate_id'])}: pool {h['pool_id']} counts {h['leased']} leased of purchase "
            f"{h['purchase_id']}; its active leases hold {h['seats']}"
        )
    for s in tx.all("books_seats_without_holding"):
        yield (
            f"{_in(s['estate_id'])}: active leases hold {s['n']} of purchase {s['purchase_id']} in pool "
            f"{s['pool_id']}, which holds none of it"
        )
    for lease in tx.all("books_lease_counts"):
        where = _in(lease["estate_id"])
        yield f"{where}: lease {lease['id']} is for {lease['count']}; its seats add up to {lease['seats']}"
    for s in tx.all("books_seats_astray"):
        where = _in(s["estate_id"])
        yield f"{where}: lease {s['lease_id']} holds seats of purchase {s['purchase_id']}, {_astray_seat(s)}"
    for v in tx.all("books_leases_beyond_validity", now=now, grace=purchases.GRACE):
        yield f"{_in(v['estate_id'])}: {_beyond_validity(v, now)} (invariant 7)"
    yield from _policies(tx, now)


def _policies(tx: Tx, now: int) -> Iterator[str]:
    """The licence policies' own invariants (docs/design.md, "Licence policies")."""
    for r in tx.all("books_reservations_beyond_holding"):
        yield (
            f"{_in(r['estate_id'])}: servers of pool {r['pool_id']} reserve {r['reserved']} {r['licence_type']} "
            f"licences; the pool holds {r['holding']}"
        )
    for h in tx.all("books_held_beyond_holding", now=now):
        yield (
            f"{_in(h['estate_id'])}: pool {h['pool_id']} holds {h['held']} seats of purchase {h['purchase_id']} "
            f"for encoders beside {h['leased']} leased, of {h['allocated']} allocated (invariant 2)"
        )
    for sl in tx.all("books_held_astray"):
        why = (
            "which has no soft-lock window there" if sl["window_found"] is None else "of a holding that does not exist"
        )
        yield (
            f"{_in(sl['estate_id'])}: pool {sl['pool_id']} holds {sl['count']} seats of purchase "
            f"{sl['purchase_id']} for encoder {sl['encoder']}, {why}"
        )


def _astray_seat(s: Row) -> str:
    if s["found"] is None:
        return "which does not exist"
    if s["purchase_estate"] != s["estate_id"]:
        return f"of estate {s['purchase_estate']}"
    if s["seat_pool"] != s["lease_pool"]:
        return f"filed under pool {s['seat_pool']}, not the lease's pool {s['lease_pool']}"
    return f"of type {s['purchase_type']}, not the lease's {s['lease_type']}"


def _beyond_validity(v: Row, now: int) -> str:
    lease = f"live lease {v['lease_id']} (encoder {v['encoder']})"
    purchase = f"purchase {v['purchase_id']} ({v['sales_order']})"
    try:
        end = purchases.grace_end(v)
    except (ValueError, TypeError):  # an expiry or hold that is no time: its rows were edited
        return f"{lease} holds seats of {purchase}, whose expiry or hold is no time"
    if v["status"] == "on_hold" and v["held_at"] is not None and v["created_at"] > v["held_at"]:
        return (
            f"{lease} was granted at {_when(v['created_at'])} seats of {purchase}, on hold since {_when(v['held_at'])}"
        )
    if now >= end:
        return f"{lease} holds seats of {purchase}, whose grace ended at {_when(end)}"
    return f"{lease} runs until {_when(v['lease_expires_at'])}, past the grace end of {purchase}, {_when(end)}"


def _orphans(tx: Tx) -> Iterator[str]:
    for s in tx.all("books_seats_without_lease"):
        where = _in(s["estate_id"])
        yield (
            f"{where}: {s['count']} seats of purchase {s['purchase_id']} belong to lease {s['lease_id']}, "
            "which does not exist"
        )
    for h in tx.all("books_holdings_astray"):
        where = _in(h["pool_estate"] or h["purchase_estate"])
        why = _astray_holding(h)
        yield f"{where}: pool {h['pool_id']} holds {h['allocated']} of purchase {h['purchase_id']}, {why}"
    for s in tx.all("books_servers_astray"):
        where = _in(s["estate_id"])
        yield f"{where}: server {s['id']} ({s['name']}) is bound to pool {s['pool_id']}, {_astray_pool(s)}"
    for c in tx.all("books_codes_astray"):
        yield f"{_in(c['estate_id'])}: code {c['id']} is live on pool {c['pool_id']}, {_astray_pool(c)}"
    for lease in tx.all("books_leases_astray"):
        yield f"{_in(lease['estate_id'])}: active lease {lease['id']} {_astray_lease(lease)}"
    for e in tx.all("books_default_pools"):
        yield f"estate {e['id']}: has {e['n']} Default Pools, not 1"
    for r in tx.all("books_rows_without_estate"):
        yield f"{_in(r['estate_id'])}: {r['kind']} {r['id']} belongs to no estate that exists"


def _astray_holding(h: Row) -> str:
    if h["pool_found"] is None:
        return "and that pool does not exist"
    if h["deleted_at"] is not None:
        return f"and that pool was deleted at {_when(h['deleted_at'])}"
    if h["purchase_found"] is None:
        return "which does not exist"
    return f"a purchase of estate {h['purchase_estate']}"


def _astray_pool(row: Row) -> str:
    if row["pool_found"] is None:
        return "which does not exist"
    if row["deleted_at"] is not None:
        return f"deleted at {_when(row['deleted_at'])}"
    return f"of estate {row['pool_estate']}"


def _astray_lease(lease: Row) -> str:
    if lease["server_found"] is None:
        return f"is of server {lease['server_id']}, which does not exist"
    if lease["removed_at"] is not None:
        return f"is of server {lease['server_id']}, removed at {_when(lease['removed_at'])}"
    if lease["pool_found"] is None:
        return f"is in pool {lease['pool_id']}, which does not exist"
    if lease["deleted_at"] is not None:
        return f"is in pool {lease['pool_id']}, deleted at {_when(lease['deleted_at'])}"
    return f"is in pool {lease['pool_id']}, but its server {lease['server_id']} is bound to pool {lease['server_pool']}"


def chain_break(tx: Tx, estate_id: str) -> str | None:
    """The first broken link of the estate's audit chain, in words, or None when whole."""
    walked = audit.walk(tx, estate_id)
    if walked.broken_at is None:
        return None
    return f"audit chain broken at event {walked.broken_at}: {walked.reason}"


def summary(report: Report) -> str:
    """The closing line: what was checked, and how many findings."""
    found = len(report.findings)
    return (
        f"checked {count(report.estates, 'estate')}, {count(report.purchases, 'purchase')}, "
        f"{count(report.active_leases, 'active lease')} and {count(report.events, 'event')}: "
        + (count(found, "finding") if found else "all invariants hold")
    )
