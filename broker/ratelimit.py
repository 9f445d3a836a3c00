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

The counters live in this process's memory behind ``RedemptionLimiter``, the interface
the redemption route uses, so that a database-backed budget can replace them.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from typing import Protocol

from broker.clock import Clock
from broker.errors import RateLimited

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ATTACK_NETWORK_BUDGET = 1
MAX_TRACKED = 100_000  # keys kept before stale ones are swept, to bound memory under a spray


class RedemptionLimiter(Protocol):
    """What the redemption route needs from the budgets, wherever they are kept."""

    def begin(self, client: IPAddress | None) -> None:
        """Raise ``RateLimited`` when ``client`` may not try now; else count the attempt."""

    def finish(self, client: IPAddress | None, *, failed: bool) -> None:
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


def about(seconds: float) -> str:
    """A wait as people say it: "about 15 minutes", never "894 s"."""
    if seconds <= 5:
        return "a moment"
    minutes = round(seconds / 60)
    if minutes <= 1:
        return "about a minute"
    if minutes < 90:
        return f"about {minutes} minutes"
    hours = round(seconds / 3600)
    return f"about {hours} hours"


class _Counts:
    """Failures (times) and attempts in flight, per key, within the window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.failures: dict[str, deque[float]] = {}
        self.pending: dict[str, int] = {}

    def count(self, key: str, now: float) -> int:
        q = self.failures.get(key)
        while q and q[0] <= now - self.window:
            q.popleft()
        return len(q or ()) + self.pending.get(key, 0)

    def wait(self, key: str, now: float) -> int:
        """Seconds until the oldest failure of ``key`` leaves the window (1: only in flight)."""
        q = self.failures.get(key)
        if not q:
            return 1
        return max(1, math.ceil(q[0] + self.window - now))

    def start(self, key: str) -> None:
        self.pending[key] = self.pending.get(key, 0) + 1

    def end(self, key: str, now: float, *, failed: bool) -> None:
        left = self.pending.get(key, 0) - 1
        if left > 0:
            self.pending[key] = left
        else:
            self.pending.pop(key, None)
        if failed:
            self.failures.setdefault(key, deque()).append(now)
            if len(self.failures) > MAX_TRACKED:
                self.sweep(now)

    def sweep(self, now: float) -> None:
        for key in [k for k, q in self.failures.items() if not q or q[-1] <= now - self.window]:
            del self.failures[key]


class FailureLimiter:
    """The in-memory ``RedemptionLimiter`` of one broker process."""

    def __init__(self, clock: Clock, per_address: int, overall: int, window: float) -> None:
        self.clock = clock
        self.per_address = per_address
        self.overall = overall
        self.window = window
        self._addresses = _Counts(window)
        self._networks = _Counts(window)
        self._all = _Counts(window)

    def under_attack(self) -> bool:
        """Whether the fleet-wide failures in the window have reached the alarm."""
        return self._all.count("", self.clock.now()) >= self.overall

    def check(self, client: IPAddress | None) -> None:
        """Raise ``RateLimited`` if ``client`` may not try a code now."""
        now = self.clock.now()
        address = address_key(client)
        if self._addresses.count(address, now) >= self.per_address:
            wait = self._addresses.wait(address, now)
            raise RateLimited(
                f"Too many wrong codes from this address; try again in {about(wait)}.",
                retry_after=wait,
            )
        network = network_key(client)
        if self.under_attack() and self._networks.count(network, now) >= ATTACK_NETWORK_BUDGET:
            wait = self._networks.wait(network, now)
            raise RateLimited(
                "This broker is receiving many wrong codes, so each network may try only a few; "
                f"try again in {about(wait)}.",
                retry_after=wait,
            )

    def begin(self, client: IPAddress | None) -> None:
        self.check(client)
        self._addresses.start(address_key(client))
        self._networks.start(network_key(client))
        self._all.start("")

    def finish(self, client: IPAddress | None, *, failed: bool) -> None:
        now = self.clock.now()
        self._addresses.end(address_key(client), now, failed=failed)
        self._networks.end(network_key(client), now, failed=failed)
        self._all.end("", now, failed=failed)
