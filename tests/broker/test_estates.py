"""Estates, their admins, the estate summary and ``/v1/me``."""

from __future__ import annotations

import json
import re

from tests.broker.estate_kit import Estate, assert_problem, base, enroll, estate, lease, new_pool, raw
from tests.conftest import DAY, Broker

TOKEN = re.compile(r"^tnr_adm_[A-Za-z0-9_-]{43}$")


async def test_create_estate_returns_ids_and_a_token_once(broker: Broker) -> None:
    body = await broker.call(
        "POST", "/v1/estates", broker.operator, {"name": "Acme Broadcast", "admin_name": "Alice"}, 201
    )
    assert set(body) == {"id", "name", "default_pool_id", "admin_id", "admin_token"}
    assert body["name"] == "Acme Broadcast"
    assert TOKEN.match(body["admin_token"])
    # The Default Pool exists, empty, made in the same transaction.
    pools = await broker.call("GET", f"{base(body['id'])}/pools", body["admin_token"], status=200)
    assert [(p["id"], p["name"], p["is_default"], p["allocated"]) for p in pools["items"]] == [
        (body["default_pool_id"], "Default Pool", True, 0)
    ]
    # The token is never shown again.
    got = await broker.call("GET", base(body["id"]), body["admin_token"], status=200)
    assert body["admin_token"] not in str(got)
    assert got["admins"] == [
        {"id": body["admin_id"], "name": "Alice", "primary": True, "created_at": "2027-01-01T00:00:00Z"}
    ]


async def test_each_estate_gets_distinct_ids_and_tokens(broker: Broker) -> None:
    a, b = await broker.estate("A"), await broker.estate("A")
    assert a["id"] != b["id"] and a["default_pool_id"] != b["default_pool_id"]
    assert a["admin_token"] != b["admin_token"]


async def test_get_estate_summary_per_licence_type(broker: Broker) -> None:
    est = await estate(broker)
    p1 = await broker.purchase(est.id, "SO-1", quantity=10, expires_in_days=365)
    await broker.purchase(est.id, "SO-2", quantity=4, expires_in_days=10)  # expiring
    await broker.purchase(est.id, "SO-3", quantity=5, licence_type="four-in-one-out", expires_in_days=-1)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p1["id"], "count": 6}])
    srv = await enroll(broker, est, paris["id"])
    await lease(broker, srv["server_token"], "E1", 2)
    got = await broker.call("GET", base(est), est.admin, status=200)
    assert got["id"] == est.id and got["name"] == "Acme Broadcast"
    assert got["summary"]["by_type"] == {
        "one-in-one-out": {
            "total": 14,
            "in_use": 2,
            "available": 12,
            "soft_locked": 0,
            "expiring": 4,
            "unavailable": 0,
        },
        "four-in-one-out": {
            "total": 5,
            "in_use": 0,
            "available": 0,
            "soft_locked": 0,
            "expiring": 0,
            "unavailable": 5,
        },
    }


async def test_get_unknown_estate_is_404(broker: Broker) -> None:
    r = await raw(broker, "GET", "/v1/estates/est_0000", broker.operator)
    assert_problem(r, 404, "not_found")


async def test_primary_admin_adds_and_removes_admins(broker: Broker) -> None:
    est = await estate(broker)
    bob = await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": "Bob"}, 201)
    assert set(bob) == {"id", "name", "primary", "token"}
    assert bob["name"] == "Bob" and bob["primary"] is False and TOKEN.match(bob["token"])
    me = await broker.call("GET", "/v1/me", bob["token"], status=200)
    assert me == {
        "kind": "admin",
        "estate_id": est.id,
        "estate_name": "Acme Broadcast",
        "admin_id": bob["id"],
        "name": "Bob",
        "primary": False,
    }
    # Bob is a real admin of the estate.
    await broker.call("GET", f"{base(est)}/pools", bob["token"], status=200)
    listed = await broker.call("GET", f"{base(est)}/admins", est.admin, status=200)
    assert [(a["name"], a["primary"]) for a in listed["items"]] == [("Alice", True), ("Bob", False)]
    await broker.call("DELETE", f"{base(est)}/admins/{bob['id']}", est.admin, status=204)
    # His token stops working at once, on every route.
    r = await raw(broker, "GET", "/v1/me", bob["token"])
    assert_problem(r, 401, "unauthenticated")
    r = await raw(broker, "GET", f"{base(est)}/pools", bob["token"])
    assert_problem(r, 401, "unauthenticated")
    listed = await broker.call("GET", f"{base(est)}/admins", est.admin, status=200)
    assert [a["name"] for a in listed["items"]] == ["Alice"]
    # Removing again: not found.
    r = await raw(broker, "DELETE", f"{base(est)}/admins/{bob['id']}", est.admin)
    assert_problem(r, 404, "not_found")


async def test_removed_admin_token_is_refused_even_when_cached(broker: Broker) -> None:
    est = await estate(broker)
    bob = await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": "Bob"}, 201)
    for _ in range(3):  # warm the token cache
        await broker.call("GET", f"{base(est)}/pools", bob["token"], status=200)
    await broker.call("DELETE", f"{base(est)}/admins/{bob['id']}", est.admin, status=204)
    r = await raw(broker, "GET", f"{base(est)}/pools", bob["token"])
    assert_problem(r, 401, "unauthenticated")


async def test_non_primary_admin_cannot_add_or_remove_admins(broker: Broker) -> None:
    est = await estate(broker)
    bob = await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": "Bob"}, 201)
    carol = await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": "Carol"}, 201)
    r = await raw(broker, "POST", f"{base(est)}/admins", bob["token"], '{"name": "Eve"}')
    assert_problem(r, 403, "forbidden")
    r = await raw(broker, "DELETE", f"{base(est)}/admins/{carol['id']}", bob["token"])
    assert_problem(r, 403, "forbidden")
    r = await raw(broker, "DELETE", f"{base(est)}/admins/{est.admin_id}", bob["token"])
    assert_problem(r, 403, "forbidden")
    listed = await broker.call("GET", f"{base(est)}/admins", est.admin, status=200)
    assert [a["name"] for a in listed["items"]] == ["Alice", "Bob", "Carol"]


async def test_primary_admin_cannot_be_removed(broker: Broker) -> None:
    est = await estate(broker)
    r = await raw(broker, "DELETE", f"{base(est)}/admins/{est.admin_id}", est.admin)
    assert_problem(r, 409, "primary_admin")
    await broker.call("GET", "/v1/me", est.admin, status=200)


async def test_operator_can_add_admins(broker: Broker) -> None:
    est = await estate(broker)
    dan = await broker.call("POST", f"{base(est)}/admins", broker.operator, {"name": "Dan"}, 201)
    await broker.call("GET", f"{base(est)}/pools", dan["token"], status=200)


async def test_add_admin_to_unknown_estate_is_404(broker: Broker) -> None:
    r = await raw(broker, "POST", "/v1/estates/est_missing/admins", broker.operator, '{"name": "X"}')
    assert_problem(r, 404, "not_found")


async def test_add_admin_validates_name(broker: Broker) -> None:
    est = await estate(broker)
    r = await raw(broker, "POST", f"{base(est)}/admins", est.admin, '{"name": ""}')
    assert_problem(r, 400, "validation_error")


async def test_me_for_each_kind_of_token(broker: Broker) -> None:
    assert await broker.call("GET", "/v1/me", broker.operator, status=200) == {"kind": "operator"}
    est = await estate(broker)
    me = await broker.call("GET", "/v1/me", est.admin, status=200)
    assert me == {
        "kind": "admin",
        "estate_id": est.id,
        "estate_name": "Acme Broadcast",
        "admin_id": est.admin_id,
        "name": "Alice",
        "primary": True,
    }
    await broker.purchase(est.id)
    srv = await enroll(broker, est, est.default_pool, "rack-7")
    me = await broker.call("GET", "/v1/me", srv["server_token"], status=200)
    assert me == {
        "kind": "server",
        "server_id": srv["server_id"],
        "name": "rack-7",
        "estate_id": est.id,
        "pool_id": est.default_pool,
    }


async def test_create_estate_needs_operator(broker: Broker) -> None:
    est = await estate(broker)
    r = await raw(broker, "POST", "/v1/estates", est.admin, '{"name": "x", "admin_name": "y"}')
    assert_problem(r, 403, "forbidden")


async def test_estate_summary_counts_on_hold_as_unavailable(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=7)
    await broker.call("PATCH", f"{base(est)}/purchases/{p['id']}", broker.operator, {"status": "on_hold"}, 200)
    got = await broker.call("GET", base(est), est.admin, status=200)
    assert got["summary"]["by_type"]["one-in-one-out"] == {
        "total": 7,
        "in_use": 0,
        "available": 0,
        "soft_locked": 0,
        "expiring": 0,
        "unavailable": 7,
    }
    broker.clock.advance(DAY)


async def test_removing_an_admin_revokes_the_codes_they_made(broker: Broker) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, "SO-1", quantity=10)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": await _purchase_id(broker, est), "count": 2}])
    bob = await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": "Bob"}, 201)
    bobs = [
        await broker.call("POST", f"{base(est)}/pools/{pool}/auth-codes", bob["token"], {}, 201)
        for pool in (est.default_pool, paris["id"])
    ]
    used = await broker.call("POST", f"{base(est)}/pools/{est.default_pool}/auth-codes", bob["token"], {}, 201)
    await broker.call("POST", "/v1/enroll", None, {"code": used["code"], "name": "early-host"}, 201)
    alices = await broker.call("POST", f"{base(est)}/pools/{est.default_pool}/auth-codes", est.admin, {}, 201)

    await broker.call("DELETE", f"{base(est)}/admins/{bob['id']}", est.admin, status=204)

    for code in bobs:
        r = await raw(broker, "POST", "/v1/enroll", None, json.dumps({"code": code["code"], "name": "late-host"}))
        assert_problem(r, 403, "auth_code_invalid")
    live = await broker.call("GET", f"{base(est)}/auth-codes", est.admin, status=200)
    assert [c["id"] for c in live["items"]] == [alices["id"]]
    await broker.call("POST", "/v1/enroll", None, {"code": alices["code"], "name": "host-a"}, 201)
    # Audited: one auth_code.revoked per code, by the admin who removed Bob, and the count.
    events = (await broker.call("GET", f"{base(est)}/events", est.admin, status=200))["items"]
    revoked = [e for e in events if e["action"] == "auth_code.revoked"]
    assert [(e["subject_id"], e["pool_id"]) for e in revoked] == [(c["id"], c["pool_id"]) for c in bobs]
    assert all(e["actor"]["id"] == est.admin_id for e in revoked)
    assert all(e["details"] == {"reason": "admin_removed", "admin_id": bob["id"]} for e in revoked)
    removed = [e for e in events if e["action"] == "admin.removed"]
    assert [e["details"] for e in removed] == [{"name": "Bob", "codes_revoked": 2}]
    assert events.index(removed[0]) > max(events.index(e) for e in revoked)


async def _purchase_id(broker: Broker, est: Estate) -> str:
    items = (await broker.call("GET", f"{base(est)}/purchases", est.admin, status=200))["items"]
    purchase_id: str = items[0]["id"]
    return purchase_id
