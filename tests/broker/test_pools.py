"""Pools: create (with moves), list, get, rename, lease lifetime, delete."""

from __future__ import annotations

import pytest

from tests.broker.estate_kit import assert_problem, base, enroll, estate, lease, new_pool, pools, raw
from tests.conftest import DAY, Broker


async def test_create_pool_with_moves_from_default(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10, expires_in_days=100)
    b = await broker.purchase(est.id, "SO-B", quantity=6, licence_type="four-in-one-out")
    pool = await new_pool(
        broker, est, "Paris", [{"purchase_id": a["id"], "count": 4}, {"purchase_id": b["id"], "count": 6}]
    )
    assert pool["name"] == "Paris" and pool["is_default"] is False
    assert pool["lease_seconds"] == 3600 and pool["created_at"] == "2027-01-01T00:00:00Z"
    assert (pool["allocated"], pool["in_use"], pool["available"], pool["revoked_unexpired"]) == (10, 0, 10, 0)
    assert pool["by_type"] == {
        "one-in-one-out": {"allocated": 4, "in_use": 0, "available": 4, "soft_locked": 0, "reserved": 0},
        "four-in-one-out": {"allocated": 6, "in_use": 0, "available": 6, "soft_locked": 0, "reserved": 0},
    }
    assert [(h["sales_order"], h["allocated"]) for h in pool["holdings"]] == [("SO-A", 4), ("SO-B", 6)]
    views = await pools(broker, est)
    assert list(views) == ["Default Pool", "Paris"]
    default = views["Default Pool"]
    assert default["allocated"] == 6
    # SO-B went entirely: the Default Pool no longer lists it.
    assert [(h["sales_order"], h["allocated"]) for h in default["holdings"]] == [("SO-A", 6)]


async def test_create_pool_without_moves_and_with_lease_seconds(broker: Broker) -> None:
    est = await estate(broker)
    pool = await broker.call("POST", f"{base(est)}/pools", est.admin, {"name": "Lyon", "lease_seconds": 600}, 201)
    assert (pool["allocated"], pool["holdings"], pool["lease_seconds"]) == (0, [], 600)
    got = await broker.call("GET", f"{base(est)}/pools/{pool['id']}", est.admin, status=200)
    assert got == pool


async def test_create_pool_with_a_bad_move_creates_nothing(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=3)
    before = await pools(broker, est)
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/pools",
        est.admin,
        f'{{"name": "Paris", "moves": [{{"purchase_id": "{a["id"]}", "count": 4}}]}}',
    )
    body = assert_problem(r, 409, "licences_in_use")
    assert body["items"] == [{"purchase_id": a["id"], "sales_order": "SO-A", "requested": 4, "unused": 3, "lacking": 1}]
    assert await pools(broker, est) == before
    # The name is still free.
    await new_pool(broker, est, "Paris")


@pytest.mark.parametrize("taken", ["paris", "PARIS", "Paris", "default pool", "DEFAULT POOL"])
async def test_pool_names_unique_ignoring_case(broker: Broker, taken: str) -> None:
    est = await estate(broker)
    await new_pool(broker, est, "Paris")
    r = await raw(broker, "POST", f"{base(est)}/pools", est.admin, f'{{"name": "{taken}"}}')
    body = assert_problem(r, 409, "name_taken")
    assert body.get("field") == "name"
    assert len(await pools(broker, est)) == 2


async def test_same_pool_name_in_two_estates_is_fine(broker: Broker) -> None:
    a, b = await estate(broker, "A"), await estate(broker, "B")
    await new_pool(broker, a, "Paris")
    await new_pool(broker, b, "Paris")


async def test_unicode_case_folding(broker: Broker) -> None:
    est = await estate(broker)
    await new_pool(broker, est, "Straße")
    r = await raw(broker, "POST", f"{base(est)}/pools", est.admin, '{"name": "STRASSE"}')
    assert_problem(r, 409, "name_taken")


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "tab\there", "bell\x07"])
async def test_pool_name_rules(broker: Broker, name: str) -> None:
    import json

    est = await estate(broker)
    r = await raw(broker, "POST", f"{base(est)}/pools", est.admin, json.dumps({"name": name}))
    body = assert_problem(r, 400, "validation_error")
    assert body["errors"][0]["field"] == "name"


async def test_pool_name_of_64_printable_characters(broker: Broker) -> None:
    est = await estate(broker)
    name = "Région Île-de-France — 東京 " + "x" * 38
    assert len(name) == 64
    pool = await new_pool(broker, est, name)
    assert pool["name"] == name


async def test_rename_and_set_lease_seconds(broker: Broker) -> None:
    est = await estate(broker)
    pool = await new_pool(broker, est, "Paris")
    url = f"{base(est)}/pools/{pool['id']}"
    got = await broker.call("PATCH", url, est.admin, {"name": "Paris Nord"}, 200)
    assert got["name"] == "Paris Nord" and got["lease_seconds"] == 3600
    got = await broker.call("PATCH", url, est.admin, {"lease_seconds": 120}, 200)
    assert got["name"] == "Paris Nord" and got["lease_seconds"] == 120
    # Renaming to its own name in another case is allowed.
    got = await broker.call("PATCH", url, est.admin, {"name": "PARIS NORD"}, 200)
    assert got["name"] == "PARIS NORD"
    await new_pool(broker, est, "Lyon")
    r = await raw(broker, "PATCH", url, est.admin, '{"name": "lyon"}')
    assert_problem(r, 409, "name_taken")
    # The old name is free again.
    await new_pool(broker, est, "Paris")


async def test_default_pool_can_be_renamed_and_tuned(broker: Broker) -> None:
    est = await estate(broker)
    got = await broker.call(
        "PATCH", f"{base(est)}/pools/{est.default_pool}", est.admin, {"name": "Main", "lease_seconds": 86400}, 200
    )
    assert got["is_default"] is True and got["name"] == "Main"


@pytest.mark.parametrize(
    "body",
    [
        '{"lease_seconds": 59}',
        '{"lease_seconds": 2592001}',
        '{"name": ""}',
        '{"is_default": true}',
        '{"lease_seconds": "60"}',
    ],
)
async def test_patch_pool_validation(broker: Broker, body: str) -> None:
    est = await estate(broker)
    r = await raw(broker, "PATCH", f"{base(est)}/pools/{est.default_pool}", est.admin, body)
    assert_problem(r, 400, "validation_error")


async def test_lease_seconds_bounds_accepted(broker: Broker) -> None:
    est = await estate(broker)
    for s in (60, 30 * 86400):
        got = await broker.call("PATCH", f"{base(est)}/pools/{est.default_pool}", est.admin, {"lease_seconds": s}, 200)
        assert got["lease_seconds"] == s


async def test_new_pool_lease_seconds_governs_lease_expiry(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, quantity=2)
    pool = await broker.call(
        "POST",
        f"{base(est)}/pools",
        est.admin,
        {"name": "Short", "lease_seconds": 300, "moves": [{"purchase_id": p["id"], "count": 2}]},
        201,
    )
    srv = await enroll(broker, est, pool["id"])
    got = await lease(broker, srv["server_token"], "E1", 1)
    assert got["expires_at"] == "2027-01-01T00:05:00Z"


async def test_get_unknown_pool_is_404(broker: Broker) -> None:
    est = await estate(broker)
    for method in ("GET", "DELETE"):
        r = await raw(broker, method, f"{base(est)}/pools/pool_nope", est.admin)
        assert_problem(r, 404, "not_found")
    r = await raw(broker, "PATCH", f"{base(est)}/pools/pool_nope", est.admin, '{"name": "x"}')
    assert_problem(r, 404, "not_found")


async def test_delete_returns_holdings_to_default(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    b = await broker.purchase(est.id, "SO-B", quantity=5)
    pool = await new_pool(
        broker, est, "Paris", [{"purchase_id": a["id"], "count": 4}, {"purchase_id": b["id"], "count": 5}]
    )
    await broker.call("DELETE", f"{base(est)}/pools/{pool['id']}", est.admin, status=204)
    views = await pools(broker, est)
    assert list(views) == ["Default Pool"]
    assert {h["sales_order"]: h["allocated"] for h in views["Default Pool"]["holdings"]} == {"SO-A": 10, "SO-B": 5}
    r = await raw(broker, "GET", f"{base(est)}/pools/{pool['id']}", est.admin)
    assert_problem(r, 404, "not_found")
    r = await raw(broker, "DELETE", f"{base(est)}/pools/{pool['id']}", est.admin)
    assert_problem(r, 404, "not_found")
    # The name can be reused, and the licences can move again.
    again = await new_pool(broker, est, "paris", [{"purchase_id": a["id"], "count": 10}])
    assert again["allocated"] == 10


async def test_default_pool_cannot_be_deleted(broker: Broker) -> None:
    est = await estate(broker)
    r = await raw(broker, "DELETE", f"{base(est)}/pools/{est.default_pool}", est.admin)
    assert r.status == 409
    assert_problem(r, 409, "default_pool")
    assert list(await pools(broker, est)) == ["Default Pool"]


async def test_pool_with_a_server_cannot_be_deleted(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    pool = await new_pool(broker, est, "Paris", [{"purchase_id": a["id"], "count": 4}])
    srv = await enroll(broker, est, pool["id"])
    r = await raw(broker, "DELETE", f"{base(est)}/pools/{pool['id']}", est.admin)
    body = assert_problem(r, 409, "pool_not_empty")
    assert (body["servers"], body["leases"]) == (1, 0)
    assert (await pools(broker, est))["Paris"]["allocated"] == 4
    # Rebinding the server away frees the pool for deletion.
    await broker.call("PATCH", f"{base(est)}/servers/{srv['server_id']}", est.admin, {"pool_id": est.default_pool}, 200)
    await broker.call("DELETE", f"{base(est)}/pools/{pool['id']}", est.admin, status=204)


async def test_pool_with_removed_server_can_be_deleted(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    pool = await new_pool(broker, est, "Paris", [{"purchase_id": a["id"], "count": 4}])
    srv = await enroll(broker, est, pool["id"])
    await lease(broker, srv["server_token"], "E1", 3)
    await broker.call("DELETE", f"{base(est)}/servers/{srv['server_id']}", est.admin, status=204)
    await broker.call("DELETE", f"{base(est)}/pools/{pool['id']}", est.admin, status=204)
    default = (await pools(broker, est))["Default Pool"]
    assert (default["allocated"], default["in_use"]) == (10, 0)


async def test_deleting_a_pool_revokes_its_live_codes(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=10)
    pool = await new_pool(broker, est, "Paris", [{"purchase_id": a["id"], "count": 4}])
    code = await broker.call("POST", f"{base(est)}/pools/{pool['id']}/auth-codes", est.admin, {}, 201)
    await broker.call("DELETE", f"{base(est)}/pools/{pool['id']}", est.admin, status=204)
    listed = await broker.call("GET", f"{base(est)}/auth-codes", est.admin, status=200)
    assert listed["items"] == []
    r = await raw(broker, "POST", "/v1/enroll", None, f'{{"code": "{code["code"]}", "name": "late"}}')
    assert_problem(r, 403, "auth_code_invalid")
    assert (await broker.call("GET", f"{base(est)}/servers", est.admin, status=200))["items"] == []


async def test_available_excludes_expired_and_held_but_allocated_counts_them(broker: Broker) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, "SO-OK", quantity=5, expires_in_days=200)
    await broker.purchase(est.id, "SO-OLD", quantity=3, expires_in_days=1)
    held = await broker.purchase(est.id, "SO-HELD", quantity=2, expires_in_days=200)
    await broker.call("PATCH", f"{base(est)}/purchases/{held['id']}", broker.operator, {"status": "on_hold"}, 200)
    broker.clock.advance(2 * DAY)
    view = (await pools(broker, est))["Default Pool"]
    assert (view["allocated"], view["in_use"], view["available"]) == (10, 0, 5)
    assert {h["sales_order"]: h["state"] for h in view["holdings"]} == {
        "SO-OK": "valid",
        "SO-OLD": "expired",
        "SO-HELD": "on_hold",
    }


async def test_in_use_and_available_follow_leases(broker: Broker) -> None:
    est = await estate(broker)
    a = await broker.purchase(est.id, "SO-A", quantity=5, expires_in_days=100)
    b = await broker.purchase(est.id, "SO-B", quantity=5, expires_in_days=300)
    srv = await enroll(broker, est, est.default_pool)
    await lease(broker, srv["server_token"], "E1", 7)
    view = (await pools(broker, est))["Default Pool"]
    assert (view["allocated"], view["in_use"], view["available"]) == (10, 7, 3)
    # Earliest expiry first.
    assert {h["purchase_id"]: (h["in_use"], h["unused"]) for h in view["holdings"]} == {
        a["id"]: (5, 0),
        b["id"]: (2, 3),
    }
    # When the lease lapses (never renewed), the view counts it free again at once.
    broker.clock.advance(3601)
    view = (await pools(broker, est))["Default Pool"]
    assert (view["in_use"], view["available"]) == (0, 10)


async def test_list_pools_needs_existing_estate(broker: Broker) -> None:
    r = await raw(broker, "GET", "/v1/estates/est_missing/pools", broker.operator)
    assert_problem(r, 404, "not_found")
    r = await raw(broker, "POST", "/v1/estates/est_missing/pools", broker.operator, '{"name": "x"}')
    assert_problem(r, 404, "not_found")
