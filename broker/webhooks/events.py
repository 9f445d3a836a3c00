"""Event types, and ``emit``: an event and its outbox rows, in the caller's transaction.

Plain functions of ``(tx, now, …)``: no aiohttp, no SQL. An event is written only when
some endpoint of the estate is subscribed to its type; each subscribed endpoint gets one
outbox row, due at once, that ``broker.webhooks.delivery`` sends.
"""

from __future__ import annotations

import json
from typing import Any

from broker.store.base import Tx
from shared.timefmt import format_ts

PURCHASE_EXPIRING = "purchase.expiring"
PURCHASE_EXPIRED = "purchase.expired"
PURCHASE_GRACE_ENDED = "purchase.grace_ended"
POOL_EXHAUSTED = "pool.exhausted"
LEASE_LAPSED = "lease.lapsed"
SERVER_ENROLLED = "server.enrolled"
SERVER_REMOVED = "server.removed"
CODE_REDEEMED = "code.redeemed"
TEST = "webhook.test"
"""Sent by ``POST …/webhooks/{id}/test`` to that one endpoint, subscribed or not."""

TYPES = (
    PURCHASE_EXPIRING,
    PURCHASE_EXPIRED,
    PURCHASE_GRACE_ENDED,
    POOL_EXHAUSTED,
    LEASE_LAPSED,
    SERVER_ENROLLED,
    SERVER_REMOVED,
    CODE_REDEEMED,
)
"""The types an endpoint may subscribe to."""

EXHAUSTED_QUIET_SECONDS = 3600
"""After a ``pool.exhausted`` for a (pool, licence type), the next one for the same pair
is sent no sooner than this: a starving fleet retries its acquires every few seconds, and
its admin needs to hear once an hour, not once per retry."""

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def body(event_type: str, event_id: str, now: float, data: dict[str, Any]) -> str:
    """The exact JSON sent (and signed): ``{type, id, timestamp, data}``."""
    return _COMPACT.encode({"type": event_type, "id": event_id, "timestamp": format_ts(now), "data": data})


def emit(
    tx: Tx, now: float, estate_id: str, event_type: str, data: dict[str, Any], *, only: str | None = None
) -> str | None:
    """Write the event for every endpoint of the estate subscribed to ``event_type`` (or
    for endpoint ``only``, whatever it is subscribed to); its id, or None when no endpoint
    wants it (then nothing is written)."""
    if only is not None:
        targets = [only]
    else:
        targets = [
            r["id"] for r in tx.all("webhooks_subscribed", estate_id=estate_id) if event_type in json.loads(r["events"])
        ]
    if not targets:
        return None
    event_id = tx.new_id("msg")
    tx.run(
        "webhook_event_insert",
        id=event_id,
        estate_id=estate_id,
        type=event_type,
        at=int(now),
        body=body(event_type, event_id, now, data),
    )
    for endpoint_id in targets:
        tx.run("webhook_outbox_insert", id=tx.new_id("whd"), endpoint_id=endpoint_id, event_id=event_id, now=int(now))
    return event_id


def subscribed(tx: Tx, estate_id: str, event_type: str) -> bool:
    return any(event_type in json.loads(r["events"]) for r in tx.all("webhooks_subscribed", estate_id=estate_id))


def mark(tx: Tx, now: float, key: str, quiet_seconds: int | None = None) -> bool:
    """Claim the once-only ``key`` (for ever, or for ``quiet_seconds``); False when it is
    already claimed. In the event's own transaction, so that replicas claim it once."""
    until = None if quiet_seconds is None else int(now) + quiet_seconds
    return tx.run("webhook_mark", key=key, until=until, now=int(now)) == 1


def pool_exhausted(
    tx: Tx,
    now: float,
    estate_id: str,
    pool_id: str,
    licence_type: str,
    *,
    requested: int,
    available: int,
    server_id: str | None,
    encoder: str,
) -> str | None:
    """``pool.exhausted`` for an acquire just refused, unless one for the same (pool,
    licence type) went out less than ``EXHAUSTED_QUIET_SECONDS`` ago."""
    if not subscribed(tx, estate_id, POOL_EXHAUSTED):
        return None
    if not mark(tx, now, f"{POOL_EXHAUSTED}:{pool_id}:{licence_type}", EXHAUSTED_QUIET_SECONDS):
        return None
    name = tx.scalar("webhook_pool_name", pool_id=pool_id)
    data = {
        "pool_id": pool_id,
        "pool_name": name,
        "licence_type": licence_type,
        "requested": requested,
        "available": available,
        "server_id": server_id,
        "encoder": encoder,
        "quiet_seconds": EXHAUSTED_QUIET_SECONDS,
    }
    return emit(tx, now, estate_id, POOL_EXHAUSTED, data)
