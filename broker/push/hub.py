"""One broker process's fan-out of stream events to its open ``GET /v1/stream`` streams.

The hub keeps the highest event id it has seen (``head``). When woken it reads every
event after it in one query, whatever server it concerns, and hands each to the
subscriptions it concerns; so a thousand open streams cost one read per wake, not a
thousand. It is woken:

- on PostgreSQL, by the process's ``LISTEN`` connection (``broker/store/listen.py``),
  which every replica's COMMIT of an event notifies: an admin acting on replica B
  reaches an agent connected to replica A;
- in process, by the handler that wrote the event (``wake``), which is all a SQLite
  broker (one process) needs;
- and every ``poll_seconds`` regardless: the safety net for a listener that is
  reconnecting, and for a ``keys rotate`` run by another process against a SQLite file.

Order and completeness rest on the store: ids grow in commit order (``broker.push.events``),
so "after ``head``" misses nothing. A subscriber that falls far behind (its client reads
too slowly) is closed; its agent resumes from its ``Last-Event-ID`` and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from broker.clock import Clock
from broker.errors import StorageUnavailable
from broker.push import events
from broker.push.events import Event
from broker.store.base import Store

log = logging.getLogger("tenure.stream")

# Events a subscription may hold unsent before it is closed (its agent then resumes).
MAX_PENDING = 1000
# Events kept at most, whatever their age (docs/configuration.md, stream_retention_seconds).
RETENTION_ROWS = 100_000
PRUNE_SECONDS = 600.0


class Subscription:
    """One open stream's inbox: the events for its server, in id order."""

    def __init__(self, server_id: str, pool_id: str | None) -> None:
        self.server_id = server_id
        self.pool_id = pool_id
        self.closed: str | None = None  # why: "shutdown", "replaced", "overflow"
        self._pending: list[Event] = []
        self._ready = asyncio.Event()

    def offer(self, event: Event) -> None:
        if self.closed is not None or not event.concerns(self.server_id, self.pool_id):
            return
        if len(self._pending) >= MAX_PENDING:
            self.close("overflow")
            return
        self._pending.append(event)
        self._ready.set()

    def close(self, why: str) -> None:
        if self.closed is None:
            self.closed = why
        self._ready.set()

    async def next(self, within: float) -> list[Event] | None:
        """The events that arrived, [] after ``within`` seconds of none, None once closed."""
        if not self._pending and self.closed is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._ready.wait()
        if self.closed is not None:
            return None
        self._ready.clear()
        batch, self._pending = self._pending, []
        return batch


class Hub:
    """The process's open streams by server, and the loop that feeds them."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        poll_seconds: float,
        max_per_server: int,
        retention_seconds: float,
        on_keys_rotated: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._clock = clock
        self._poll = poll_seconds
        self._max = max_per_server
        self._retention = retention_seconds
        self._on_keys_rotated = on_keys_rotated
        self._subs: dict[str, list[Subscription]] = {}
        self._wake = asyncio.Event()
        self.head = 0
        self.closing = False

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, server_id: str, pool_id: str | None) -> Subscription:
        """A new subscription for the server; past ``max_per_server`` the oldest is closed."""
        sub = Subscription(server_id, pool_id)
        if self.closing:
            sub.close("shutdown")
            return sub
        subs = self._subs.setdefault(server_id, [])
        subs.append(sub)
        while len(subs) > self._max:
            subs.pop(0).close("replaced")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.server_id)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.server_id]

    def wake(self) -> None:
        """Look for new events now (an event was written, or a notification came)."""
        self._wake.set()

    def close(self) -> None:
        """Shutting down: every stream ends now, so that no open stream holds the exit."""
        self.closing = True
        for subs in self._subs.values():
            for sub in subs:
                sub.close("shutdown")
        self._subs.clear()

    async def start(self) -> None:
        """Take the newest event id as the starting point; before any stream is served,
        so that nothing between a stream's backlog and the hub's first read is skipped."""
        self.head = await self._store.read(events.head)

    async def run(self) -> None:
        """Feed the subscriptions until cancelled. Never raises otherwise."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            self._wake.clear()
            await self.catch_up()

    async def catch_up(self) -> None:
        """Read every event after ``head`` and hand each to the streams it concerns."""
        try:
            while True:
                found, head = await self._store.read(partial(events.since, after=self.head))
                if any(e.type == events.KEYS_ROTATED for e in found):
                    await self._keys_rotated()
                for event in found:
                    for sub in list(self._subs.get(event.server_id, ())) if event.server_id else self._all():
                        sub.offer(event)
                if len(found) < events.BATCH:
                    self.head = max(self.head, head, found[-1].id if found else 0)
                    return
                self.head = found[-1].id
        except StorageUnavailable as exc:
            log.warning("stream events: %s", exc.detail)
        except Exception:
            log.exception("stream events: cannot read new events; trying again")

    async def _keys_rotated(self) -> None:
        """Before any agent hears of new keys, this replica publishes them (GET /v1/keys),
        rather than within key_reload_seconds. If it cannot, the event still goes out: the
        agent then fetches the keys when a token signed with the new one reaches it."""
        try:
            await self._on_keys_rotated()
        except StorageUnavailable as exc:
            log.warning("stream events: cannot re-read the signing keys: %s", exc.detail)
        except Exception:
            log.exception("stream events: cannot re-read the signing keys")

    def _all(self) -> list[Subscription]:
        return [sub for subs in self._subs.values() for sub in subs]

    async def prune_loop(self) -> None:
        """Forget events past the retention, every ``PRUNE_SECONDS``. Never raises."""
        while True:
            try:
                await self._store.write(
                    partial(
                        events.prune,
                        now=self._clock.now(),
                        keep_seconds=self._retention,
                        keep_rows=RETENTION_ROWS,
                    )
                )
            except StorageUnavailable as exc:
                log.warning("stream events prune: %s", exc.detail)
            except Exception:
                log.exception("stream events prune failed; trying again later")
            await asyncio.sleep(PRUNE_SECONDS)
