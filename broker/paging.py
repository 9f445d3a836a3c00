"""Cursor pages for the lists that grow with an estate: pools, servers, purchases, codes, admins.

Each list is ordered by its own keys (pools by name, servers by name, purchases by expiry…)
with the row's id last, so the order is total. A page's cursor ``next`` is the id of its
last item; the next page starts just after that row's keys (its query reads the keys back
by id, within the same estate), so rows added or removed meanwhile shift nothing, and an
id from another estate or none at all gives an empty page. ``next`` is null on the last
page. The same shape (``items``, ``next``) as the leases list and the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.store.base import Row, Tx

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
EVERYTHING = 2**62
"""A limit above any count of rows, for callers inside the broker that need the whole list
(``LIMIT -1``, SQLite's "no limit", is an error in PostgreSQL)."""

Page = dict[str, Any]


def fetch(
    tx: Tx,
    query: str,
    render: Callable[[Row], dict[str, Any]],
    *,
    after: str = "",
    limit: int | None = None,
    **params: Any,
) -> Page:
    """Run ``query`` for one page of at most ``limit`` rows (all rows when None) and render them."""
    rows = tx.all(query, after=after, limit=EVERYTHING if limit is None else limit + 1, **params)
    more = limit is not None and len(rows) > limit
    if more:
        rows = rows[:limit]
    return {"items": [render(r) for r in rows], "next": rows[-1]["id"] if more else None}
