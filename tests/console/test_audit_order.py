"""The audit log in both orders: oldest first by default, newest first for the console.

No browser: the real app and a real SQLite file, as the console's audit page calls it.
"""

from __future__ import annotations

from typing import Any

from tests.broker.estate_kit import Estate, base, estate, new_pool
from tests.conftest import Broker


async def walk(broker: Broker, est: Estate, query: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Every event of ``query``, following ``next`` page by page; and how many pages."""
    out: list[dict[str, Any]] = []
    cursor, pages = "", 0
    while True:
        page = await broker.call("GET", f"{base(est)}/events?{query}&limit={limit}{cursor}", est.admin, status=200)
        pages += 1
        assert len(page["items"]) <= limit
        out += page["items"]
        if page["next"] is None:
            return out, pages
        assert page["next"] == page["items"][-1]["id"]
        cursor = f"&after={page['next']}"


async def busy_estate(broker: Broker) -> tuple[Estate, str, str]:
    """An estate with a dozen events, some of them about pool "Paris"; its id and another's."""
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=20)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p["id"], "count": 4}])
    for i in range(5):
        await new_pool(broker, est, f"Pool {i}")
        broker.clock.advance(1)
    await broker.call(
        "POST",
        f"{base(est)}/moves",
        est.admin,
        {"from_pool": paris["id"], "to_pool": est.default_pool, "items": [{"purchase_id": p["id"], "count": 1}]},
        201,
    )
    await broker.call("PATCH", f"{base(est)}/pools/{paris['id']}", est.admin, {"name": "Paris 2"}, 200)
    other = await estate(broker, "Other estate")  # its events must never show up here
    await new_pool(broker, other, "Elsewhere")
    return est, paris["id"], p["id"]


async def test_the_default_stays_oldest_first(broker: Broker) -> None:
    est, _, _ = await busy_estate(broker)
    items, _ = await walk(broker, est, "", 500)
    ids = [int(e["id"]) for e in items]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert items[0]["action"] == "estate.created" and items[-1]["action"] == "pool.updated"
    explicit, _ = await walk(broker, est, "order=asc", 500)
    assert explicit == items


async def test_newest_first_pages_through_the_whole_log_once(broker: Broker) -> None:
    est, _, _ = await busy_estate(broker)
    oldest_first, _ = await walk(broker, est, "", 500)
    newest_first, pages = await walk(broker, est, "order=desc", 3)
    assert pages == -(-len(oldest_first) // 3)  # ceil: every page but the last is full
    assert newest_first == list(reversed(oldest_first))
    assert newest_first[0]["action"] == "pool.updated"
    # Ascending pages walk the same log the other way, page by page too.
    ascending, _ = await walk(broker, est, "order=asc", 3)
    assert ascending == oldest_first


async def test_a_cursor_continues_in_the_order_asked(broker: Broker) -> None:
    est, _, _ = await busy_estate(broker)
    first = await broker.call("GET", f"{base(est)}/events?order=desc&limit=4", est.admin, status=200)
    cursor = int(first["next"])
    after = await broker.call("GET", f"{base(est)}/events?order=desc&limit=4&after={cursor}", est.admin, status=200)
    assert after["items"] and all(int(e["id"]) < cursor for e in after["items"])
    forward = await broker.call("GET", f"{base(est)}/events?limit=500&after={cursor}", est.admin, status=200)
    assert [e["id"] for e in forward["items"]] == [e["id"] for e in reversed(first["items"][:-1])]


async def test_filters_hold_newest_first(broker: Broker) -> None:
    est, paris, _ = await busy_estate(broker)
    oldest, _ = await walk(broker, est, f"pool={paris}", 500)
    newest, _ = await walk(broker, est, f"pool={paris}&order=desc", 2)
    assert newest == list(reversed(oldest))
    # The pool's history includes the move out of it, filed under its target.
    assert [e["action"] for e in newest] == ["pool.updated", "licences.moved", "licences.moved", "pool.created"]
    pools_only, _ = await walk(broker, est, "action=pool&order=desc", 2)
    assert [e["action"] for e in pools_only] == ["pool.updated"] + ["pool.created"] * 6


async def test_an_unknown_order_is_refused(broker: Broker) -> None:
    est, _, _ = await busy_estate(broker)
    for bad in ("sideways", "DESC", ""):
        problem = await broker.call("GET", f"{base(est)}/events?order={bad}", est.admin, status=400)
        assert problem["code"] == "validation_error"
        assert problem["errors"][0]["field"] == "order"
