"""Failure budgets for code redemption: throttle the guessers, never lock out the fleet.

Budgets, per window (``redeem_window_seconds``, 15 minutes by default):

- **Per address** (an IPv4 address, an IPv6 /64): ``redeem_failures_per_address``
  failures (10); past it, that address waits.
- **For everyone together:** ``redeem_failures_global`` failures (100) is the alarm, not
  a lockout. Past it the broker is *under attack*, and each network (IPv4 /24, IPv6 /48)
  may then fail ``ATTACK_NETWORK_BUDGET`` time (1) per window. A correct code from any
  network that has not just failed is still checked, so a technician enrols while the
  guessers crawl at one guess per network per window.

Why this bounds guessing: codes carry a check digit, so 10^7 of them can be right; an
attacker's checked guesses per window are at most ``redeem_failures_global`` plus one per
network they control. docs/design.md ("Code redemption limits") works out the odds.

An attempt in flight counts against every budget until it is known to have succeeded
(``begin`` … ``finish``): otherwise a burst of concurrent guesses would all pass the check
before the first failure is recorded. Callers begin an attempt only once its request is
read and valid, so an unfinished body holds no budget.

The budgets live in the database (table ``redemption_attempts``), so that every broker on
one database spends the same budgets: a guesser gains nothing by spreading guesses across
replicas. Each attempt is a row, written by ``begin`` in the same serializable write that
checks the budgets (so two brokers' concurrent guesses cannot both pass one last unit of
budget), and counted from then on. ``finish`` marks one in-flight row of the address as a
failure (its time becomes the failure's) or deletes it on success; in-flight rows of an
address are interchangeable, so which one does not matter. A broker that dies mid-attempt
leaves its row in flight: it counts as a failure until it leaves the window, which errs
on the side of the budget. Rows older than the window are pruned by every ``begin``. The
cost is two small writes per redemption, which is rare (an enrolment), never per lease.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Protocol

from broker.clock import Clock
from broker.errors import RateLimited
from broker.store.base import Store, Tx
from shared import durations

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ATTACK_NETWORK_BUDGET = 1


class RedemptionLimiter(Protocol):
    """What the redemption route needs from the budgets, wherever they are kept."""

    async def begin(self, client: IPAddress | None) -> None:
        """Raise ``RateLimited`` when ``client`` may not try now; else count the attempt."""

    async def finish(self, client: IPAddress | None, *, failed: bool) -> None:
        """End an attempt started with ``begin``; a failure stays in the window."""


def address_key(client: IPAddress | None) -> str:
    """The per-address budget's key: an IPv4 address, or an IPv6 client's /64."""
    if client is None:
        return "local"
    if client.version == 6:
        return str(ipaddress.IPv6Network((client, 64), strict=False))
    return str(client)


def network_key(client: IPAddress | None) -> str:
    """The under-attack budget's key: the client's IPv4 /24 or IPv6 /48."""
    if client is None:
        return "local"
    return str(ipaddress.ip_network((client, 48 if client.version == 6 else 24), strict=False))


@dataclass(frozen=True)
class Limits:
    """The budgets: ``redeem_failures_per_address``, ``redeem_failures_global``, ``redeem_window_seconds``."""

    per_address: int
    overall: int
    window: float


def _budget_spent(tx: Tx, now: float, client: IPAddress | None, limits: Limits) -> None:
    """Raise ``RateLimited`` if ``client``'s address or network may not try now."""
    since = now - limits.window
    row = tx.one("redemption_address_count", address=address_key(client), since=since)
    if row is not None and row["attempts"] >= limits.per_address:
        wait = _wait(row["oldest_failure"], now, limits.window)
        raise RateLimited(
            f"Too many wrong codes from this address; try again in {durations.about(wait)}.",
            retry_after=wait,
        )
    if int(tx.scalar("redemption_count", since=since)) < limits.overall:
        return
    row = tx.one("redemption_network_count", network=network_key(client), since=since)
    if row is not None and row["attempts"] >= ATTACK_NETWORK_BUDGET:
        wait = _wait(row["oldest_failure"], now, limits.window)
        raise RateLimited(
            "This broker is receiving many wrong codes, so each network may try only a few; "
            f"try again in {durations.about(wait)}.",
            retry_after=wait,
        )


def _wait(oldest_failure: float | None, now: float, window: float) -> int:
    """Seconds until the oldest failure leaves the window (1 when only attempts in flight count)."""
    if oldest_failure is None:
        return 1
    return max(1, math.ceil(oldest_failure + window - now))


def begin_attempt(tx: Tx, now: float, client: IPAddress | None, limits: Limits) -> None:
    """Check the budgets for ``client`` and count its attempt as in flight."""
    tx.run("redemption_prune", since=now - limits.window)
    _budget_spent(tx, now, client, limits)
    tx.run("redemption_begin", address=address_key(client), network=network_key(client), now=now)


def finish_attempt(tx: Tx, now: float, client: IPAddress | None, *, failed: bool) -> None:
    """End one attempt of ``client`` in flight: a failure stays in the window, a success leaves it."""
    address = address_key(client)
    if not failed:
        tx.run("redemption_succeed", address=address)
    elif not tx.run("redemption_fail", address=address, now=now):
        # Its in-flight row was pruned (an attempt longer than the window): count it anyway.
        tx.run("redemption_fail_late", address=address, network=network_key(client), now=now)


class StoredLimiter:
    """The ``RedemptionLimiter`` kept in the database, shared by every broker on it."""

    def __init__(self, store: Store, clock: Clock, per_address: int, overall: int, window: float) -> None:
        self.store = store
        self.clock = clock
        self.limits = Limits(per_address, overall, window)

    async def begin(self, client: IPAddress | None) -> None:
        await self.store.write(lambda tx: begin_attempt(tx, self.clock.now(), client, self.limits))

    async def finish(self, client: IPAddress | None, *, failed: bool) -> None:
        await self.store.write(lambda tx: finish_attempt(tx, self.clock.now(), client, failed=failed))
