"""What one broker process runs for webhooks: the dispatcher, the expiry scheduler (which
also purges deliveries older than 30 days), and the note of refused acquires
(``pool.exhausted``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from broker.clock import Clock
from broker.errors import StorageUnavailable
from broker.secretkey import SecretKey
from broker.store.base import Store
from broker.webhooks import delivery, events, guard, scheduler

log = logging.getLogger("tenure.webhooks")

NOTE_EVERY_SECONDS = 60.0
"""A process writes a ``pool.exhausted`` check for a (pool, licence type) at most this
often: a starving fleet's refused acquires cost no write each. The once-an-hour rule
itself (``events.EXHAUSTED_QUIET_SECONDS``) is kept in the database, across replicas."""


class Webhooks:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        sealer: SecretKey,
        *,
        resolve: guard.Resolve,
        allow_private: bool,
        timeout_seconds: float,
        poll_seconds: float,
        scan_seconds: float,
        schedule: tuple[float, ...] = delivery.SCHEDULE,
    ) -> None:
        self.store, self.clock = store, clock
        self.sealer = sealer
        self.resolve, self.allow_private = resolve, allow_private
        self.scan_seconds = scan_seconds
        self.dispatcher = delivery.Dispatcher(
            store,
            clock,
            sealer,
            resolve=resolve,
            allow_private=allow_private,
            timeout_seconds=timeout_seconds,
            poll_seconds=poll_seconds,
            schedule=schedule,
        )
        self._noted: dict[tuple[str, str], float] = {}
        self.scanned = asyncio.Event()
        """Set once the first expiry scan (made at start) is over."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Webhooks]:
        """Deliver and scan in the background until the block ends (the broker stops)."""
        async with self.dispatcher:
            tasks = [
                asyncio.create_task(self.dispatcher.run(), name="webhook-delivery"),
                asyncio.create_task(self._scan_loop(), name="webhook-expiry"),
            ]
            try:
                yield self
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def vet(self, url: str) -> None:
        """``ValidationFailed`` unless webhooks may go to ``url`` (see ``guard``)."""
        await guard.vet(url, self.resolve, self.allow_private)

    async def scan_expiry(self) -> int:
        """One round of the expiry scheduler; how many events it sent."""
        sent = await self.store.write(partial(scheduler.fire_due, now=self.clock.now()))
        if sent:
            self.dispatcher.wake()
        return sent

    async def _scan_loop(self) -> None:
        while True:
            try:
                await self.scan_expiry()
                await self.store.write(partial(delivery.purge, now=self.clock.now()))
            except StorageUnavailable as exc:
                log.warning("webhook expiry scan: %s", exc.detail)
            except Exception:
                log.exception("webhook expiry scan failed; trying again next round")
            self.scanned.set()
            await asyncio.sleep(self.scan_seconds)

    async def acquire_refused(
        self,
        estate_id: str,
        pool_id: str,
        licence_type: str,
        *,
        requested: int,
        available: int,
        server_id: str | None,
        encoder: str,
    ) -> None:
        """An acquire was refused for lack of seats: ``pool.exhausted``, at most once per
        (pool, licence type) per quiet period. Never raises: the refusal is the answer."""
        now = self.clock.now()
        key = (pool_id, licence_type)
        if now - self._noted.get(key, float("-inf")) < NOTE_EVERY_SECONDS:
            return
        self._noted[key] = now
        if len(self._noted) > 10_000:
            self._noted.clear()
        try:
            sent = await self.store.write(
                partial(
                    events.pool_exhausted,
                    now=now,
                    estate_id=estate_id,
                    pool_id=pool_id,
                    licence_type=licence_type,
                    requested=requested,
                    available=available,
                    server_id=server_id,
                    encoder=encoder,
                ),
                lane=estate_id,
            )
        except StorageUnavailable as exc:
            log.warning("pool.exhausted webhook not written: %s", exc.detail)
            return
        except Exception:  # the refusal stays the answer, whatever went wrong here
            log.exception("pool.exhausted webhook not written")
            return
        if sent:
            self.dispatcher.wake()
