"""Which brokers answer, remembered so that "away" and "back" are each logged once."""

from __future__ import annotations

import logging

from agent.clock import Clock
from agent.errors import BrokerUnavailable

log = logging.getLogger(__name__)


class BrokerHealth:
    """Reachability of each broker, logged once per change (away / back)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # Monotonic instants: only ever compared with one another.
        self.away_since: dict[str, float] = {}
        self.last_ok: dict[str, float] = {}
        self.last_error: dict[str, str] = {}

    def ok(self, url: str) -> None:
        now = self._clock.monotonic()
        self.last_ok[url] = now
        since = self.away_since.pop(url, None)
        self.last_error.pop(url, None)
        if since is not None:
            log.info("broker back: %s (away %.0f s)", url, now - since)

    def failed(self, url: str, exc: BrokerUnavailable) -> None:
        self.last_error[url] = exc.reason
        if url not in self.away_since:
            self.away_since[url] = self._clock.monotonic()
            log.warning("broker away: %s (%s)", url, exc.reason)

    def reachable(self, url: str) -> bool | None:
        if url in self.away_since:
            return False
        return True if url in self.last_ok else None
