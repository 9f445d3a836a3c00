"""Purchases: recording, listing, their derived states over time, and operator changes."""

from __future__ import annotations

import json

import pytest

from shared.timefmt import format_ts
from tests.broker.estate_kit import assert_problem, base, enroll, estate, lease, pools, raw
from tests.conftest import DAY, T0, Broker


async def test_record_purchase_lands_in_default_pool(broker: Broker) -> None:
    est = await estate(broker)
    body = await broker.call(
        "POST",
        f"{base(est)}/purchases",
        broker.operator,
        {
            "sales_order": "SO-1001",
            "licence_type": "one-in-one-out",
            "quantity": 25,
            "expires_at": "2028-01-01T00:00:00Z",
        },
        201,
    )
    assert body == {
        "id": body["id"],
        "sales_order": "SO-1001",
        "licence_type": "one-in-one-out",
        "quantity": 25,
        "expires_at": "2028-01-01T00:00:00Z",
        "status": "valid",
        "state": "valid",
        "grace_ends_at": "2028-01-31T00:00:00Z",
    }
    view = (await pools(broker, est))["Default Pool"]
    assert (view["allocated"], view["in_use"], view["available"]) == (25, 0, 25)
    assert view["holdings"] == [
        {
            "purchase_id": body["id"],
            "sales_order": "SO-1001",
            "licence_type": "one-in-one-out",
            "expires_at": "2028-01-01T00:00:00Z",
            "state": "valid",
            "allocated": 25,
            "in_use": 0,
            "soft_locked": 0,
            "unused": 25,
        }
    ]
    assert view["by_type"] == {
        "one-in-one-out": {"allocated": 25, "in_use": 0, "available": 25, "soft_locked": 0, "reserved": 0}
    }


async def test_expiry_offset_is_normalised_to_utc(broker: Broker) -> None:
    est = await estate(broker)
    body = await broker.call(
        "POST",
        f"{base(est)}/purchases",
        broker.operator,
        {"sales_order": "SO-1", "licence_type": "x", "quantity": 1, "expires_at": "2028-01-01T02:00:00+02:00"},
        201,
    )
    assert body["expires_at"] == "2028-01-01T00:00:00Z"


async def test_list_purchases_for_admin_and_operator(broker: Broker) -> None:
    est = await estate(broker)
    late = await broker.purchase(est.id, "SO-LATE", expires_in_days=400)
    early = await broker.purchase(est.id, "SO-EARLY", expires_in_days=100, licence_type="four-in-one-out")
    for token in (est.admin, broker.operator):
        got = await broker.call("GET", f"{base(est)}/purchases", token, status=200)
        assert [p["id"] for p in got["items"]] == [early["id"], late["id"]]
    other = await estate(broker, "Other")
    assert (await broker.call("GET", f"{base(other)}/purchases", other.admin, status=200))["items"] == []


async def test_record_purchase_unknown_estate_is_404(broker: Broker) -> None:
    r = await raw(
        broker,
        "POST",
        "/v1/estates/est_none/purchases",
        broker.operator,
        '{"sales_order": "S", "licence_type": "x", "quantity": 1, "expires_at": "2028-01-01T00:00:00Z"}',
    )
    assert_problem(r, 404, "not_found")


async def test_admin_cannot_record_or_change_purchases(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id)
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/purchases",
        est.admin,
        '{"sales_order": "S", "licence_type": "x", "quantity": 1, "expires_at": "2028-01-01T00:00:00Z"}',
    )
    assert_problem(r, 403, "forbidden")
    r = await raw(broker, "PATCH", f"{base(est)}/purchases/{p['id']}", est.admin, '{"status": "valid"}')
    assert_problem(r, 403, "forbidden")


@pytest.mark.parametrize("licence_type", ["One-In", "a b", "x" * 65, "", "type/../x"])
async def test_licence_type_format(broker: Broker, licence_type: str) -> None:
    est = await estate(broker)
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/purchases",
        broker.operator,
        json.dumps(
            {"sales_order": "S", "licence_type": licence_type, "quantity": 1, "expires_at": "2028-01-01T00:00:00Z"}
        ),
    )
    body = assert_problem(r, 400, "validation_error")
    assert body["errors"][0]["field"] == "licence_type"


async def test_quantity_bounds_accept_the_limits(broker: Broker) -> None:
    est = await estate(broker)
    for q in (1, 10_000_000):
        await broker.purchase(est.id, f"SO-{q}", quantity=q)
    assert (await pools(broker, est))["Default Pool"]["allocated"] == 10_000_001


async def test_states_follow_the_clock(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=3, expires_in_days=60)
    url = f"{base(est)}/purchases"

    async def state() -> tuple[str, str, int]:
        item = (await broker.call("GET", url, est.admin, status=200))["items"][0]
        view = (await pools(broker, est))["Default Pool"]
        assert view["holdings"][0]["state"] == item["state"]
        return item["state"], item["grace_ends_at"], view["available"]

    assert await state() == ("valid", format_ts(T0 + 90 * DAY), 3)
    broker.clock.advance(30 * DAY - 1)
    assert (await state())[0] == "valid"
    broker.clock.advance(1)  # exactly 30 days before expiry
    assert (await state())[::2] == ("expiring", 3)
    broker.clock.advance(30 * DAY - 1)
    assert (await state())[::2] == ("expiring", 3)
    broker.clock.advance(1)  # expiry: no new seats, renewals for 30 days
    assert (await state())[::2] == ("expired", 0)
    broker.clock.advance(30 * DAY - 1)
    assert (await state())[::2] == ("expired", 0)
    broker.clock.advance(1)
    assert (await state())[::2] == ("ended", 0)
    assert p["state"] == "valid"


async def test_on_hold_and_lifting_the_hold(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=4, expires_in_days=365)
    url = f"{base(est)}/purchases/{p['id']}"
    held = await broker.call("PATCH", url, broker.operator, {"status": "on_hold"}, 200)
    assert held["status"] == "on_hold" and held["state"] == "on_hold"
    # Grace is counted from the hold.
    assert held["grace_ends_at"] == format_ts(T0 + 30 * DAY)
    view = (await pools(broker, est))["Default Pool"]
    assert (view["allocated"], view["available"]) == (4, 0)
    assert view["holdings"][0]["state"] == "on_hold"
    # Holding again keeps the original hold time.
    broker.clock.advance(5 * DAY)
    again = await broker.call("PATCH", url, broker.operator, {"status": "on_hold"}, 200)
    assert again["grace_ends_at"] == format_ts(T0 + 30 * DAY)
    lifted = await broker.call("PATCH", url, broker.operator, {"status": "valid"}, 200)
    assert lifted["state"] == "valid" and lifted["grace_ends_at"] == format_ts(T0 + 395 * DAY)
    assert (await pools(broker, est))["Default Pool"]["available"] == 4


async def test_on_hold_pool_refuses_new_leases(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=4)
    srv = await enroll(broker, est, est.default_pool)
    await broker.call("PATCH", f"{base(est)}/purchases/{p['id']}", broker.operator, {"status": "on_hold"}, 200)
    body = await lease(broker, srv["server_token"], "E1", 1, status=409)
    assert body["code"] == "pool_exhausted"


async def test_operator_extends_expiry(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=2, expires_in_days=10)
    assert p["state"] == "expiring"
    url = f"{base(est)}/purchases/{p['id']}"
    body = await broker.call("PATCH", url, broker.operator, {"expires_at": "2029-06-01T00:00:00Z"}, 200)
    assert body["expires_at"] == "2029-06-01T00:00:00Z" and body["state"] == "valid"
    assert body["status"] == "valid"
    listed = await broker.call("GET", f"{base(est)}/purchases", est.admin, status=200)
    assert listed["items"][0]["expires_at"] == "2029-06-01T00:00:00Z"
    # An expired purchase extended is grantable again.
    broker.clock.advance(900 * DAY)
    assert (await pools(broker, est))["Default Pool"]["available"] == 0
    await broker.call("PATCH", url, broker.operator, {"expires_at": format_ts(broker.clock.now() + 90 * DAY)}, 200)
    assert (await pools(broker, est))["Default Pool"]["available"] == 2


async def test_patch_validation(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id)
    url = f"{base(est)}/purchases/{p['id']}"
    for body, field in (
        ('{"status": "expired"}', "status"),
        ('{"quantity": 5}', "quantity"),
        ('{"expires_at": "soon"}', "expires_at"),
        ('{"status": 1}', "status"),
    ):
        r = await raw(broker, "PATCH", url, broker.operator, body)
        got = assert_problem(r, 400, "validation_error")
        assert got["errors"][0]["field"] == field


async def test_patch_unknown_purchase_or_other_estates_purchase_is_404(broker: Broker) -> None:
    a, b = await estate(broker, "A"), await estate(broker, "B")
    pb = await broker.purchase(b.id)
    r = await raw(broker, "PATCH", f"{base(a)}/purchases/pur_nope", broker.operator, '{"status": "on_hold"}')
    assert_problem(r, 404, "not_found")
    r = await raw(broker, "PATCH", f"{base(a)}/purchases/{pb['id']}", broker.operator, '{"status": "on_hold"}')
    assert_problem(r, 404, "not_found")
    listed = await broker.call("GET", f"{base(b)}/purchases", b.admin, status=200)
    assert listed["items"][0]["status"] == "valid"
