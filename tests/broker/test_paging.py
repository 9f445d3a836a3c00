"""Lists that grow are paged, and one pool's view costs the same however many pools its estate has."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker import paging, pools
from broker.ids import new_id
from broker.store.sqlite import SqliteTx, connect, load_queries
from tests.broker.estate_kit import Estate, base, enroll, estate, new_pool
from tests.conftest import Broker


@dataclass
class Cost:
    statements: list[str] = field(default_factory=list)
    steps: int = 0


def view_cost(db: Path, now: float, estate_id: str, pool_id: str) -> tuple[dict[str, Any], Cost]:
    """Render one pool on a connection of its own, counting statements and VM steps."""
    conn = connect(db)
    conn.row_factory = None  # as the store's own connections: SqliteTx builds the dicts
    cost = Cost()

    def step() -> int:
        cost.steps += 1
        return 0

    try:
        conn.set_trace_callback(cost.statements.append)
        conn.set_progress_handler(step, 1)
        view = pools.view(SqliteTx(conn, load_queries(), new_id), now, estate_id, pool_id)
    finally:
        conn.close()
    return view, cost


@pytest.mark.sqlite_only  # counts SQLite's virtual-machine steps
async def test_a_pool_view_does_not_grow_with_the_other_pools(broker: Broker, tmp_path: Path) -> None:
    est = await estate(broker)
    purchase = await broker.purchase(est.id, quantity=1000)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": purchase["id"], "count": 10}])
    db = tmp_path / "data" / "tenure.db"
    before, alone = view_cost(db, broker.clock.now(), est.id, paris["id"])
    for i in range(40):
        other = await broker.purchase(est.id, sales_order=f"SO-{i}", quantity=5)
        await new_pool(broker, est, f"Other {i}", [{"purchase_id": other["id"], "count": 5}])
    after, crowded = view_cost(db, broker.clock.now(), est.id, paris["id"])
    assert after == before
    assert len(crowded.statements) == len(alone.statements)
    # Index seeks, not scans: the work stays within a few per cent.
    assert crowded.steps <= alone.steps * 1.1, (alone.steps, crowded.steps)


async def _pages(broker: Broker, est: Estate, path: str, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    sep = "&" if "?" in path else "?"
    cursor = ""
    while True:
        page = await broker.call("GET", f"{base(est)}/{path}{sep}limit={limit}{cursor}", est.admin, status=200)
        pages.append([item["id"] for item in page["items"]])
        if page["next"] is None:
            return pages
        assert page["next"] == page["items"][-1]["id"]
        cursor = f"&after={page['next']}"


@pytest.mark.parametrize("path", ["pools", "servers", "purchases", "admins", "auth-codes", "servers?pool={default}"])
async def test_lists_page_through_everything_once_in_order(broker: Broker, path: str) -> None:
    est = await estate(broker)
    for i in range(5):
        await broker.purchase(est.id, sales_order=f"SO-{i}", quantity=10, expires_in_days=100 + i)
    for i in range(5):
        await new_pool(broker, est, f"Pool {i}")
        await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": f"Admin {i}"}, 201)
        await broker.call("POST", f"{base(est)}/pools/{est.default_pool}/auth-codes", est.admin, {}, 201)
        await enroll(broker, est, est.default_pool, name=f"host-{i}")
    path = path.format(default=est.default_pool)
    whole = await broker.call("GET", f"{base(est)}/{path}", est.admin, status=200)
    assert whole["next"] is None and len(whole["items"]) >= 5
    everything = [item["id"] for item in whole["items"]]
    pages = await _pages(broker, est, path, limit=2)
    assert [len(p) for p in pages[:-1]] == [2] * (len(pages) - 1)
    assert [i for p in pages for i in p] == everything


async def test_a_list_is_capped_by_default(broker: Broker) -> None:
    est = await estate(broker)
    for i in range(paging.DEFAULT_LIMIT + 1):
        await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": f"Admin {i}"}, 201)
    page = await broker.call("GET", f"{base(est)}/admins", est.admin, status=200)
    assert len(page["items"]) == paging.DEFAULT_LIMIT and page["next"] == page["items"][-1]["id"]
    rest = await broker.call("GET", f"{base(est)}/admins?after={page['next']}", est.admin, status=200)
    assert len(rest["items"]) == 2 and rest["next"] is None  # Alice and 101 more


async def test_a_cursor_from_another_estate_shows_nothing_of_it(broker: Broker) -> None:
    mine, theirs = await estate(broker, "Mine"), await estate(broker, "Theirs")
    page = await broker.call("GET", f"{base(mine)}/pools?after={theirs.default_pool}", mine.admin, status=200)
    assert page == {"items": [], "next": None}


async def test_limit_over_the_cap_is_refused(broker: Broker) -> None:
    est = await estate(broker)
    for path in ("pools", "servers", "purchases", "admins", "auth-codes"):
        r = await broker.client.get(f"{base(est)}/{path}?limit={paging.MAX_LIMIT + 1}", headers=broker.auth(est.admin))
        assert r.status == 400, path
        body = await r.json()
        assert body["code"] == "validation_error" and body["errors"][0]["field"] == "limit"


def test_sqlite_takes_row_values() -> None:
    # The cursor queries compare row values, which SQLite has since 3.15.
    assert sqlite3.sqlite_version_info >= (3, 15)
