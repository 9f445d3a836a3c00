"""Failure budgets for code redemption: per client address, and for everyone together.

Eight digits are 10^8 codes; with 10 failures per address and 1000 in all per
15 minutes, guessing one live code takes on the order of years even from many
addresses. The counters live in memory: each broker replica keeps its own (documented).

An attempt in flight counts against both budgets until it is known to have succeeded
(``begin`` … ``finish``): otherwise a burst of concurrent guesses would all pass the
check before the first failure is recorded, and the limit would not bound a burst.
"""

from __future__ import annotations

import math
from collections import deque

from broker.clock import Clock
from broker.errors import RateLimited


class FailureLimiter:
    def __init__(self, clock: Clock, per_address: int, overall: int, window: float) -> None:
        self.clock = clock
        self.per_address = per_address
        self.overall = overall
        self.window = window
        self._by_address: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._pending: dict[str, int] = {}
        self._pending_all = 0

    def _trim(self, q: deque[float], now: float) -> None:
        while q and q[0] <= now - self.window:
            q.popleft()

    def check(self, address: str) -> None:
        """Raise ``RateLimited`` if this address, or everyone, has used the budget."""
        now = self.clock.now()
        self._trim(self._all, now)
        if len(self._all) + self._pending_all >= self.overall:
            raise RateLimited(
                "Too many failed code attempts on this broker; try again later.",
                retry_after=self._retry_after(self._all, now),
            )
        q = self._by_address.get(address)
        if q is not None:
            self._trim(q, now)
        if len(q or ()) + self._pending.get(address, 0) >= self.per_address:
            raise RateLimited(
                "Too many failed code attempts from this address; try again later.",
                retry_after=self._retry_after(q, now),
            )

    def begin(self, address: str) -> None:
        """``check``, then count this attempt as a failure until ``finish`` says otherwise."""
        self.check(address)
        self._pending[address] = self._pending.get(address, 0) + 1
        self._pending_all += 1

    def finish(self, address: str, *, failed: bool) -> None:
        """End an attempt started with ``begin``; a failure stays in the window."""
        left = self._pending.get(address, 0) - 1
        if left > 0:
            self._pending[address] = left
        else:
            self._pending.pop(address, None)
        self._pending_all = max(0, self._pending_all - 1)
        if failed:
            self.failed(address)

    def failed(self, address: str) -> None:
        now = self.clock.now()
        self._all.append(now)
        self._by_address.setdefault(address, deque()).append(now)
        if len(self._by_address) > 100_000:  # bound memory under a spray of addresses
            for addr in [a for a, q in self._by_address.items() if not q or q[-1] <= now - self.window]:
                del self._by_address[addr]

    def _retry_after(self, q: deque[float] | None, now: float) -> int:
        if not q:  # only attempts in flight: they settle within moments
            return 1
        return max(1, math.ceil(q[0] + self.window - now))
