"""Sending the outbox: claim due rows, POST each, record every attempt, reschedule.

At least once, across restarts and replicas. A round claims a batch of due rows in one
write transaction (``claim``): each row gets this round's claim id and a claim-until
time past the longest a send can take, so no other replica (PostgreSQL: ``FOR UPDATE
SKIP LOCKED`` in the query, and the claim's own guard under SERIALIZABLE) and no later
round sends the same attempt while it is in flight. Each send's outcome is written by
``record`` in its own transaction: a 2xx delivers the row; anything else (a status
outside 2xx, 3xx included since redirects are not followed; a timeout; a refused or
unreachable address; a TLS failure) schedules the next attempt after the next delay of
the schedule, with up to 10 % jitter, or, after the last, marks it ``failed``. A broker
stopped mid-send (SIGTERM) gives its unfinished rows back as it stops, due at once; one
that crashes leaves the claim to run out. Either way the attempt is made again, by
whichever replica comes first.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import aiohttp

from broker.clock import Clock
from broker.errors import StorageUnavailable, ValidationFailed
from broker.secretkey import SecretKey
from broker.store.base import Row, Store, Tx
from broker.webhooks import endpoints, guard, signing

log = logging.getLogger("tenure.webhooks")

SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""When each attempt is made, after the one before it failed: at once, then 5 s, 5 min,
30 min, 2 h, 5 h, 10 h and 10 h. After the last fails the delivery is ``failed``."""
RESPONSE_CAP = 64 * 1024
"""At most this much of a receiver's answer is read: its status decides, not its body."""
BATCH = 50
JITTER = 0.1
ERROR_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def claim(tx: Tx, now: float, claim_id: str, until: float, limit: int = BATCH) -> list[Row]:
    """Claim up to ``limit`` due, unclaimed outbox rows; each with its event and endpoint."""
    for row in tx.all("webhook_outbox_due", now=int(now), limit=limit):
        tx.run("webhook_outbox_claim", outbox_id=row["id"], claim=claim_id, until=int(until), now=int(now))
    return tx.all("webhook_outbox_claimed", claim=claim_id)


def any_due(tx: Tx, now: float) -> bool:
    """Whether a claim now would find a row (a read: an idle broker takes no write lock)."""
    return tx.one("webhook_outbox_any_due", now=int(now)) is not None


def record(
    tx: Tx, now: float, row: Row, claim_id: str, outcome: Outcome, schedule: Sequence[float], jitter: float
) -> str:
    """Write one attempt's outcome; ``delivered``, ``retrying`` or ``failed``.

    ``jitter`` in [-1, 1] spreads the next attempt by up to ``JITTER`` of its delay."""
    attempt = int(row["attempts"]) + 1
    if outcome.ok:
        result = "delivered"
    elif attempt >= len(schedule):
        result = "failed"
    else:
        result = "retrying"
    tx.run(
        "webhook_attempt_insert",
        endpoint_id=row["endpoint_id"],
        outbox_id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        attempt=attempt,
        at=int(now),
        status_code=outcome.status_code,
        latency_ms=outcome.latency_ms,
        error=outcome.error,
        outcome=result,
    )
    if outcome.ok:
        tx.run("webhook_succeeded", endpoint_id=row["endpoint_id"], now=int(now))
    else:
        tx.run("webhook_failed", endpoint_id=row["endpoint_id"], now=int(now))
    if tx.one("webhook_outbox_of_claim", outbox_id=row["id"], claim=claim_id) is None:
        return result  # the claim ran out and another round has the row: it decides
    if result == "retrying":
        delay = schedule[attempt]
        tx.run("webhook_outbox_retry", outbox_id=row["id"], next_at=int(now + delay * (1 + JITTER * jitter)))
    else:
        tx.run("webhook_outbox_done", outbox_id=row["id"], state=result)
    return result


KEEP_SECONDS = 30 * 86400
"""Finished deliveries, their events and attempts are kept this long, then purged."""


def purge(tx: Tx, now: float, limit: int = 1000) -> int:
    """Forget up to ``limit`` each of the attempts, finished deliveries and events older than
    ``KEEP_SECONDS``, and quiet periods that are over; how many rows went."""
    before = int(now) - KEEP_SECONDS
    gone = tx.run("webhook_attempts_purge", before=before, limit=limit)
    gone += tx.run("webhook_outbox_purge", before=before, limit=limit)
    gone += tx.run("webhook_events_purge", before=before, limit=limit)
    return gone + tx.run("webhook_marks_purge", now=int(now))


def release(tx: Tx, claim_id: str) -> int:
    """Give back the rows of a claim not sent (a broker stopping): due again at once."""
    return tx.run("webhook_outbox_release", claim=claim_id)


class Dispatcher:
    """The outbox sender of one broker process (``run`` is its loop; ``deliver_due`` one round)."""

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
        schedule: Sequence[float] = SCHEDULE,
        jitter: Callable[[], float] = lambda: random.uniform(-1.0, 1.0),  # noqa: S311 - jitter, not a secret
    ) -> None:
        self._store, self._clock, self._sealer = store, clock, sealer
        self._resolve, self._allow_private = resolve, allow_private
        self._timeout, self._poll = timeout_seconds, poll_seconds
        self.schedule = tuple(schedule)
        self._jitter = jitter
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._claims: set[str] = set()
        self._quiet = asyncio.Event()  # set while no round is sending
        self._quiet.set()

    async def __aenter__(self) -> Dispatcher:
        connector = aiohttp.TCPConnector(
            resolver=guard.VettedResolver(self._resolve, self._allow_private), use_dns_cache=False, limit=20
        )
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        for claim_id in list(self._claims):
            try:
                async with asyncio.timeout(2):
                    await self._store.write(partial(release, claim_id=claim_id))
            except (StorageUnavailable, TimeoutError):
                pass  # the claim runs out by itself

    def wake(self) -> None:
        """Look at the outbox now (an event was just written in this process)."""
        self._wake.set()

    async def idle(self) -> None:
        """Wait until no round of this dispatcher is sending."""
        await self._quiet.wait()

    async def run(self) -> None:
        while True:
            try:
                sent = await self.deliver_due()
            except StorageUnavailable as exc:
                log.warning("webhook delivery: %s", exc.detail)
                sent = 0
            except Exception:
                log.exception("webhook delivery round failed; trying again")
                sent = 0
            if sent >= BATCH:
                continue
            try:
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def deliver_due(self) -> int:
        """One round: claim the due rows and send them, concurrently; how many were sent."""
        now = self._clock.now()
        if not await self._store.read(partial(any_due, now=now)):
            return 0
        claim_id = secrets.token_hex(12)
        self._claims.add(claim_id)
        self._quiet.clear()
        # Kept while in flight, so that a broker stopping gives back what it did not send.
        try:
            rows = await self._store.write(partial(claim, now=now, claim_id=claim_id, until=now + self._timeout + 60))
        except Exception:
            self._done(claim_id)  # nothing was claimed
            raise
        results = await asyncio.gather(*(self._send(row, claim_id) for row in rows), return_exceptions=True)
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, Exception):  # its claim runs out, and it is sent again
                log.error("webhook %s: the attempt could not be recorded: %s", row["event_id"], result)
        self._done(claim_id)
        return len(rows)

    def _done(self, claim_id: str) -> None:
        self._claims.discard(claim_id)
        if not self._claims:
            self._quiet.set()

    async def _send(self, row: Row, claim_id: str) -> None:
        try:
            outcome = await self.post(row)
        except Exception as exc:  # a bug or a secret that will not open: an attempt that failed
            log.exception("webhook %s to endpoint %s", row["event_id"], row["endpoint_id"])
            outcome = Outcome(None, 0, f"the broker could not send it: {type(exc).__name__}")
        result = await self._store.write(
            partial(
                record,
                now=self._clock.now(),
                row=row,
                claim_id=claim_id,
                outcome=outcome,
                schedule=self.schedule,
                jitter=self._jitter(),
            )
        )
        if result == "failed":
            log.warning(
                "webhook %s to endpoint %s failed %d times; given up",
                row["event_id"],
                row["endpoint_id"],
                len(self.schedule),
            )

    async def post(self, row: Row) -> Outcome:
        """One attempt at sending ``row``'s event to its endpoint."""
        if self._session is None:
            raise RuntimeError("Dispatcher used outside 'async with'")
        now = self._clock.now()
        body = str(row["body"]).encode()
        headers = signing.headers(endpoints.keys(self._sealer, row, now), str(row["event_id"]), int(now), body)
        url = str(row["url"])
        started = time.monotonic()

        def done(status: int | None, error: str | None) -> Outcome:
            ms = int((time.monotonic() - started) * 1000)
            return Outcome(status, ms, None if error is None else error[:ERROR_CHARS])

        try:
            host, port = guard.check_url(url, self._allow_private)
            if guard.literal(host) is not None:  # aiohttp never asks a resolver about an address
                await guard.vetted_addresses(host, port, self._resolve, self._allow_private)
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                error = await _drain(response)
                if error is None and not 200 <= response.status < 300:
                    error = _describe(response)
                return done(response.status, error)
        except ValidationFailed as exc:
            return done(None, exc.detail)
        except guard.AddressRefused as exc:
            return done(None, str(exc))
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            if isinstance(cause, guard.AddressRefused):
                return done(None, str(cause))
            return done(None, f"cannot connect: {cause.strerror or cause}")
        except TimeoutError:
            return done(None, f"no answer within {self._timeout:g} s")
        except aiohttp.ClientError as exc:
            return done(None, f"{type(exc).__name__}: {exc}")


async def _drain(response: aiohttp.ClientResponse) -> str | None:
    """Read at most ``RESPONSE_CAP`` of the answer; a note when there was more."""
    total = 0
    while total <= RESPONSE_CAP:
        chunk = await response.content.read(RESPONSE_CAP + 1 - total)
        if not chunk:
            return None
        total += len(chunk)
    response.close()
    return f"answer longer than {RESPONSE_CAP // 1024} KiB: not read further"


def _describe(response: aiohttp.ClientResponse) -> str:
    if 300 <= response.status < 400:
        return f"HTTP {response.status}: redirects are not followed (to {response.headers.get('Location', '?')})"
    return f"HTTP {response.status} {response.reason or ''}".strip()
