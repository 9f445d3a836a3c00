"""An estate's webhook endpoints: plain functions of ``(tx, now, …)``, no SQL, no aiohttp.

The signing secret is shown once, when it is made (create, rotate). It must stay usable
for HMAC, so it cannot be hashed: it is stored sealed under the deployment's secret key
(``broker.secretkey.SecretKey.seal``, purpose ``webhook``, bound to the endpoint's id and
the secret's creation time), as the lease-signing keys are. After a rotation the old
secret goes on signing beside the new one for ``ROTATION_OVERLAP_SECONDS``.
"""

from __future__ import annotations

import json
from typing import Any

from broker import audit, paging
from broker.errors import NotFound
from broker.principal import Principal
from broker.secretkey import SecretKey
from broker.store.base import Row, Tx
from broker.webhooks import events, signing
from shared.timefmt import format_ts

PURPOSE = "webhook"
ROTATION_OVERLAP_SECONDS = 24 * 3600
FAILING_AFTER = 3
"""Consecutive failed attempts after which an endpoint is flagged ``failing`` (until a 2xx)."""


def view(row: Row) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""

    def ts(value: Any) -> str | None:
        return None if value is None else format_ts(value)

    return {
        "id": row["id"],
        "url": row["url"],
        "events": json.loads(row["events"]),
        "created_at": format_ts(row["created_at"]),
        "failing": int(row["failures"]) >= FAILING_AFTER,
        "failures": int(row["failures"]),
        "last_success_at": ts(row["last_success_at"]),
        "last_failure_at": ts(row["last_failure_at"]),
    }


def get(tx: Tx, estate_id: str, endpoint_id: str) -> Row:
    row = tx.one("webhook_by_id", endpoint_id=endpoint_id, estate_id=estate_id)
    if row is None:
        raise NotFound("No such webhook endpoint in this estate.")
    return row


def list_all(tx: Tx, estate_id: str, *, after: str = "", limit: int | None = None) -> paging.Page:
    return paging.fetch(tx, "webhooks_of_estate", view, after=after, limit=limit, estate_id=estate_id)


def create(
    tx: Tx,
    now: float,
    actor: Principal,
    estate_id: str,
    url: str,
    types: list[str],
    sealer: SecretKey,
    raw: bytes,
) -> dict[str, Any]:
    """A new endpoint with secret ``raw`` (made by the caller); the view plus ``secret``."""
    endpoint_id = tx.new_id("wh")
    created = int(now)
    tx.run(
        "webhook_insert",
        id=endpoint_id,
        estate_id=estate_id,
        url=url,
        events=json.dumps(sorted(set(types))),
        now=created,
        secret_created=created,
        secret_sealed=sealer.seal(PURPOSE, endpoint_id, created, raw),
    )
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.WEBHOOK_CREATED,
        subject_id=endpoint_id,
        url=url,
        events=sorted(set(types)),
    )
    return {**view(get(tx, estate_id, endpoint_id)), "secret": signing.show(raw)}


def delete(tx: Tx, now: float, actor: Principal, estate_id: str, endpoint_id: str) -> None:
    """Forget the endpoint, its pending deliveries and its attempts."""
    row = get(tx, estate_id, endpoint_id)
    tx.run("webhook_attempts_delete_of_endpoint", endpoint_id=endpoint_id)
    tx.run("webhook_outbox_delete_of_endpoint", endpoint_id=endpoint_id)
    tx.run("webhook_delete", endpoint_id=endpoint_id, estate_id=estate_id)
    audit.record(tx, now, actor, estate_id, audit.Action.WEBHOOK_DELETED, subject_id=endpoint_id, url=row["url"])


def rotate(
    tx: Tx, now: float, actor: Principal, estate_id: str, endpoint_id: str, sealer: SecretKey, raw: bytes
) -> dict[str, Any]:
    """Give the endpoint the new secret ``raw``; the old one signs too until the overlap ends."""
    row = get(tx, estate_id, endpoint_id)
    created = max(int(now), int(row["secret_created"]) + 1)
    until = int(now) + ROTATION_OVERLAP_SECONDS
    tx.run(
        "webhook_rotate",
        endpoint_id=endpoint_id,
        estate_id=estate_id,
        old_until=until,
        secret_created=created,
        secret_sealed=sealer.seal(PURPOSE, endpoint_id, created, raw),
    )
    audit.record(tx, now, actor, estate_id, audit.Action.WEBHOOK_SECRET_ROTATED, subject_id=endpoint_id, url=row["url"])
    return {"id": endpoint_id, "secret": signing.show(raw), "previous_valid_until": format_ts(until)}


def send_test(tx: Tx, now: float, actor: Principal, estate_id: str, endpoint_id: str) -> dict[str, Any]:
    """Queue a ``webhook.test`` event for this endpoint alone; its id."""
    row = get(tx, estate_id, endpoint_id)
    event_id = events.emit(
        tx,
        now,
        estate_id,
        events.TEST,
        {"endpoint_id": endpoint_id, "message": "a test event from Tenure"},
        only=endpoint_id,
    )
    audit.record(tx, now, actor, estate_id, audit.Action.WEBHOOK_TESTED, subject_id=endpoint_id, url=row["url"])
    return {"event_id": event_id}


def keys(sealer: SecretKey, row: Row, now: float) -> list[bytes]:
    """The secrets that sign a delivery now: the current one, and the previous one
    during its overlap. ``row`` carries the endpoint's secret columns."""
    found = [sealer.open(PURPOSE, row["endpoint_id"], int(row["secret_created"]), bytes(row["secret_sealed"]))]
    if row["old_sealed"] is not None and row["old_until"] is not None and now < int(row["old_until"]):
        found.append(sealer.open(PURPOSE, row["endpoint_id"], int(row["old_created"]), bytes(row["old_sealed"])))
    return found


def deliveries(tx: Tx, estate_id: str, endpoint_id: str, *, before: int, limit: int) -> dict[str, Any]:
    """The endpoint's attempts, newest first, ``limit`` at a time (``next``: pass as ``before``),
    and how many of its deliveries are pending, delivered and failed."""
    get(tx, estate_id, endpoint_id)
    rows = tx.all("webhook_attempts_of_endpoint", endpoint_id=endpoint_id, before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    counts = {"pending": 0, "delivered": 0, "failed": 0}
    for r in tx.all("webhook_outbox_counts", endpoint_id=endpoint_id):
        counts[str(r["state"])] = int(r["n"])
    return {
        "items": [
            {
                "id": str(r["id"]),
                "event_id": r["event_id"],
                "event_type": r["event_type"],
                "attempt": int(r["attempt"]),
                "at": format_ts(r["at"]),
                "status_code": r["status_code"],
                "latency_ms": int(r["latency_ms"]),
                "error": r["error"],
                "outcome": r["outcome"],
            }
            for r in rows
        ],
        "next": str(rows[-1]["id"]) if more and rows else None,
        "deliveries": counts,
    }


def metrics(tx: Tx) -> Row:
    """For ``/metrics``: deliveries pending and given up, and endpoints failing, all estates."""
    row = tx.one("webhook_metrics", failing_after=FAILING_AFTER)
    return row if row is not None else {"pending": 0, "failed": 0, "failing": 0}
