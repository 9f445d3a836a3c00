"""The expiry events: ``purchase.expiring`` (30 days before), ``.expired``, ``.grace_ended``.

Any replica may run a round; each event fires once for each (purchase, expiry date),
because its mark (``webhook_marks``, a unique key) is inserted in the same transaction as
its outbox rows, and the store runs that transaction as if alone. When the broker was
down across several stages (or a purchase is recorded already expired), only the latest
stage is sent and the earlier ones are marked without a message: a receiver hears
"grace ended", not three stale messages at once. A changed expiry date (PATCH) is a new
date, so its events fire again.
"""

from __future__ import annotations

from typing import Any

from broker.purchases import EXPIRING_WINDOW, GRACE
from broker.store.base import Row, Tx
from broker.webhooks import events
from shared.timefmt import format_ts

BATCH = 200


def _stages(expires_at: int) -> list[tuple[str, int]]:
    return [
        (events.PURCHASE_EXPIRING, expires_at - EXPIRING_WINDOW),
        (events.PURCHASE_EXPIRED, expires_at),
        (events.PURCHASE_GRACE_ENDED, expires_at + GRACE),
    ]


def _key(event_type: str, purchase: Row) -> str:
    return f"{event_type}:{purchase['id']}:{int(purchase['expires_at'])}"


def _data(purchase: Row) -> dict[str, Any]:
    expires = int(purchase["expires_at"])
    return {
        "purchase_id": purchase["id"],
        "sales_order": purchase["sales_order"],
        "licence_type": purchase["licence_type"],
        "quantity": int(purchase["quantity"]),
        "status": purchase["status"],
        "expires_at": format_ts(expires),
        "grace_ends_at": format_ts(expires + GRACE),
    }


def fire_due(tx: Tx, now: float, limit: int = BATCH) -> int:
    """Fire the expiry events now due that have not fired; how many were sent."""
    sent = 0
    for purchase in tx.all("purchases_near_expiry", now=int(now), window=EXPIRING_WINDOW, grace=GRACE, limit=limit):
        stages = _stages(int(purchase["expires_at"]))
        keys = [_key(t, purchase) for t, _ in stages]
        marked = {r["key"] for r in tx.all("webhook_marked", k1=keys[0], k2=keys[1], k3=keys[2])}
        due = [(t, k) for (t, at), k in zip(stages, keys, strict=True) if at <= now and k not in marked]
        for _, key in due:
            events.mark(tx, now, key)
        if due and events.emit(tx, now, purchase["estate_id"], due[-1][0], _data(purchase)) is not None:
            sent += 1
    return sent
