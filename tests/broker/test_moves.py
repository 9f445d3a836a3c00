"""Moves of unused licences between pools: all or nothing, only unused, recorded."""

from __future__ import annotations

import json
from typing import Any

from tests.broker.estate_kit import Estate, assert_problem, base, enroll, estate, lease, new_pool, pools, raw
from tests.conftest import Broker


def holdings(view: dict[str, Any]) -> dict[str, int]:
    return {h["sales_order"]: h["allocated"] for h in view["holdings"]}


async def move(broker: Broker, est: Estate, src: str, dst: str, items: list[tuple[str, int]], status: int = 201) -> Any:
    return await broker.call(
        "POST",
        f"{base(est)}/moves",
        est.admin,
        {"from_pool": src, "to_pool": dst, "items": [{"purchase_id": p, "count": n} for p, n in items]},
        status,
    )


async def test_move_several_purchases_between_custom_pools(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    b = await broker.purchase(est.id, "SO-B", quantity=8, licence_type="four-in-one-out")
    paris = await new_pool(
        broker, est, "Paris", [{"purchase_id": a["id"], "count": 6}, {"purchase_id": b["id"], "count": 8}]
    )
    lyon = await new_pool(broker, est, "Lyon")
    got = await move(broker, est, paris["id"], lyon["id"], [(a["id"], 2), (b["id"], 3)])
    assert got["id"].startswith("mov_")
    assert (got["from_pool"], got["to_pool"], got["at"]) == (paris["id"], lyon["id"], "2027-01-01T00:00:00Z")
    assert got["items"] == [{"purchase_id": a["id"], "count": 2}, {"purchase_id": b["id"], "count": 3}]
    views = await pools(broker, est)
    assert holdings(views["Default Pool"]) == {"SO-A": 4}
    assert holdings(views["Paris"]) == {"SO-A": 4, "SO-B": 5}
    assert holdings(views["Lyon"]) == {"SO-A": 2, "SO-B": 3}
    # Invariant 1: every purchase's holdings sum to its quantity.
    total: dict[str, int] = {}
    for v in views.values():
        for so, n in holdings(v).items():
            total[so] = total.get(so, 0) + n
    assert total == {"SO-A": 10, "SO-B": 8}


async def test_move_back_to_default(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": a["id"], "count": 10}])
    await move(broker, est, paris["id"], est.default_pool, [(a["id"], 10)])
    views = await pools(broker, est)
    assert holdings(views["Default Pool"]) == {"SO-A": 10}
    assert views["Paris"]["allocated"] == 0 and views["Paris"]["holdings"] == []


async def test_duplicate_items_are_summed(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    paris = await new_pool(broker, est, "Paris")
    got = await move(broker, est, est.default_pool, paris["id"], [(a["id"], 2), (a["id"], 3)])
    assert got["items"] == [{"purchase_id": a["id"], "count": 5}]
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps(
            {
                "from_pool": est.default_pool,
                "to_pool": paris["id"],
                "items": [{"purchase_id": a["id"], "count": 3}, {"purchase_id": a["id"], "count": 3}],
            }
        ),
    )
    body = assert_problem(r, 409, "licences_in_use")
    assert body["items"][0]["requested"] == 6 and body["items"][0]["unused"] == 5


async def test_one_bad_item_moves_nothing(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    b = await broker.purchase(est.id, "SO-B", quantity=4)
    paris = await new_pool(broker, est, "Paris")
    before = await pools(broker, est)
    events_before = await broker.call("GET", f"{base(est)}/events", est.admin, status=200)
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps(
            {
                "from_pool": est.default_pool,
                "to_pool": paris["id"],
                "items": [{"purchase_id": a["id"], "count": 5}, {"purchase_id": b["id"], "count": 5}],
            }
        ),
    )
    body = assert_problem(r, 409, "licences_in_use")
    assert body["items"] == [{"purchase_id": b["id"], "sales_order": "SO-B", "requested": 5, "unused": 4, "lacking": 1}]
    assert "SO-B" in body["detail"]
    assert await pools(broker, est) == before
    assert await broker.call("GET", f"{base(est)}/events", est.admin, status=200) == events_before


async def test_unknown_purchase_in_one_item_moves_nothing(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    paris = await new_pool(broker, est, "Paris")
    before = await pools(broker, est)
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps(
            {
                "from_pool": est.default_pool,
                "to_pool": paris["id"],
                "items": [{"purchase_id": a["id"], "count": 5}, {"purchase_id": "pur_nope", "count": 1}],
            }
        ),
    )
    assert_problem(r, 404, "not_found")
    assert await pools(broker, est) == before


async def test_purchase_not_held_by_source_pool(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    paris, lyon = await new_pool(broker, est, "Paris"), await new_pool(broker, est, "Lyon")
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps({"from_pool": paris["id"], "to_pool": lyon["id"], "items": [{"purchase_id": a["id"], "count": 1}]}),
    )
    body = assert_problem(r, 409, "licences_in_use")
    assert body["items"][0]["unused"] == 0 and body["items"][0]["lacking"] == 1


async def test_only_unused_licences_move(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10, expires_in_days=100)
    b = await broker.purchase(est.id, "SO-B", quantity=10, expires_in_days=200)
    paris = await new_pool(
        broker, est, "Paris", [{"purchase_id": a["id"], "count": 6}, {"purchase_id": b["id"], "count": 2}]
    )
    srv = await enroll(broker, est, paris["id"])
    await lease(broker, srv["server_token"], "E1", 5)  # 5 of SO-A (earliest expiry)
    await lease(broker, srv["server_token"], "E2", 2)  # 1 of SO-A, 1 of SO-B
    before = await pools(broker, est)
    assert {h["sales_order"]: (h["in_use"], h["unused"]) for h in before["Paris"]["holdings"]} == {
        "SO-A": (6, 0),
        "SO-B": (1, 1),
    }
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps(
            {
                "from_pool": paris["id"],
                "to_pool": est.default_pool,
                "items": [{"purchase_id": b["id"], "count": 1}, {"purchase_id": a["id"], "count": 1}],
            }
        ),
    )
    body = assert_problem(r, 409, "licences_in_use")
    assert body["items"] == [{"purchase_id": a["id"], "sales_order": "SO-A", "requested": 1, "unused": 0, "lacking": 1}]
    assert await pools(broker, est) == before
    # The unused one moves.
    await move(broker, est, paris["id"], est.default_pool, [(b["id"], 1)])
    views = await pools(broker, est)
    assert holdings(views["Paris"]) == {"SO-A": 6, "SO-B": 1}
    assert views["Paris"]["in_use"] == 7 and views["Paris"]["available"] == 0
    # Releasing a lease makes its licences movable at once.
    await lease(broker, srv["server_token"], "E1", 0, status=204)
    await move(broker, est, paris["id"], est.default_pool, [(a["id"], 5)])
    assert holdings((await pools(broker, est))["Default Pool"]) == {"SO-A": 9, "SO-B": 9}


async def test_licences_of_a_lapsed_lease_can_move(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=4)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": a["id"], "count": 4}])
    srv = await enroll(broker, est, paris["id"])
    await lease(broker, srv["server_token"], "E1", 4)
    broker.clock.advance(3600)  # exp reached, never renewed
    await move(broker, est, paris["id"], est.default_pool, [(a["id"], 4)])


async def test_same_pool_and_foreign_pool(broker: Broker) -> None:
    est, other = await estate(broker), await estate(broker, "Other")
    a = await broker.purchase(est.id, "SO-A", quantity=3)
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps(
            {
                "from_pool": est.default_pool,
                "to_pool": est.default_pool,
                "items": [{"purchase_id": a["id"], "count": 1}],
            }
        ),
    )
    body = assert_problem(r, 400, "validation_error")
    assert body["errors"][0]["field"] == "to_pool"
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps(
            {
                "from_pool": est.default_pool,
                "to_pool": other.default_pool,
                "items": [{"purchase_id": a["id"], "count": 1}],
            }
        ),
    )
    assert_problem(r, 404, "not_found")
    assert holdings((await pools(broker, est))["Default Pool"]) == {"SO-A": 3}
    assert (await pools(broker, other))["Default Pool"]["allocated"] == 0


async def test_move_validation(broker: Broker) -> None:
    est = await estate(broker)
    for body, field in (
        ({"from_pool": "a", "to_pool": "b", "items": []}, "items"),
        ({"from_pool": "a", "to_pool": "b", "items": [{"purchase_id": "p", "count": 0}]}, "items[0].count"),
        ({"from_pool": "a", "to_pool": "b", "items": [{"purchase_id": "p"}]}, "items[0].count"),
        ({"from_pool": "a", "items": [{"purchase_id": "p", "count": 1}]}, "to_pool"),
        ({"from_pool": "a", "to_pool": "b", "items": "all"}, "items"),
        ({"from_pool": "a", "to_pool": "b", "items": [{"purchase_id": "p", "count": 1}] * 101}, "items"),
    ):
        r = await raw(broker, "POST", f"{base(est)}/moves", est.admin, json.dumps(body))
        got = assert_problem(r, 400, "validation_error")
        assert got["errors"][0]["field"] == field, got


async def test_move_is_recorded_with_before_and_after(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    paris = await new_pool(broker, est, "Paris")
    mv = await move(broker, est, est.default_pool, paris["id"], [(a["id"], 4)])
    events = await broker.call("GET", f"{base(est)}/events?action=licences.moved", est.admin, status=200)
    [ev] = events["items"]
    assert ev["subject_id"] == mv["id"] and ev["actor"] == {"kind": "admin", "id": est.admin_id, "name": "Alice"}
    assert ev["details"]["from_pool"] == est.default_pool and ev["details"]["to_pool"] == paris["id"]
    assert ev["details"]["items"] == [{"purchase_id": a["id"], "count": 4}]
    assert ev["details"]["before"] == {a["id"]: {"from_allocated": 10, "to_allocated": 0}}
    assert ev["details"]["after"] == {a["id"]: {"from_allocated": 6, "to_allocated": 4}}
