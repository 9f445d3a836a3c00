"""PostgreSQL ``LISTEN``: one connection per broker process that hears other replicas' events.

A write that records a stream event also runs ``pg_notify('tenure_stream', '')``
(``queries_postgres/stream.sql``); PostgreSQL delivers it at COMMIT to every connection
listening on the channel, one per replica. ``listen`` calls ``wake`` for each, and once
each time it (re)connects (whatever was notified while it was away is read then).

The connection is its own, outside the store's pool: it sits idle in ``LISTEN`` for the
life of the process. It is checked every ``PROBE_SECONDS`` with a query (and the same TCP
settings as the pool's connections notice a vanished host), and when it fails it is
opened again after a jittered pause that doubles up to ``MAX_PAUSE`` seconds. Meanwhile
the hub's slow poll carries on: no event is lost, only later.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import psycopg

from broker.store.postgres import _first_line, _redacted, _tcp_timeouts

log = logging.getLogger("tenure.stream")

CHANNEL = "tenure_stream"
PROBE_SECONDS = 30.0
FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0


async def listen(
    url: str, wake: Callable[[], None], *, wait_seconds: float = 5.0, rng: random.Random | None = None
) -> None:
    """Listen on the stream channel until cancelled, reconnecting with jittered backoff."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
    pause = FIRST_PAUSE
    failures = 0
    while True:
        try:
            settings: dict[str, Any] = {"connect_timeout": max(1, round(wait_seconds)), **_tcp_timeouts(wait_seconds)}
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **settings)
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                if failures:
                    log.info("stream listener connected again to %s", _redacted(url))
                pause, failures = FIRST_PAUSE, 0
                wake()  # whatever was committed while not listening
                while True:
                    async for _ in conn.notifies(timeout=PROBE_SECONDS):
                        wake()
                    await conn.execute("SELECT 1")  # still there?
        except (psycopg.Error, OSError) as exc:
            failures += 1
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(level, "stream listener lost the database (%s); reconnecting", _first_line(exc))
        await asyncio.sleep(rng.uniform(pause / 2, pause))
        pause = min(pause * 2, MAX_PAUSE)
