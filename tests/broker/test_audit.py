"""The audit log: who, what, when, before/after; cursor paging; filters; per estate."""

from __future__ import annotations

from typing import Any

from shared.timefmt import format_ts
from tests.broker.estate_kit import Estate, assert_problem, base, enroll, estate, lease, new_pool, raw
from tests.conftest import T0, Broker


async def events(broker: Broker, est: Estate, query: str = "", token: str | None = None) -> list[dict[str, Any]]:
    """Every event, following the cursor."""
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        sep = "&" if query else ""
        page = await broker.call(
            "GET", f"{base(est)}/events?{query}{sep}limit=500{after}", token or est.admin, status=200
        )
        out += page["items"]
        if page["next"] is None:
            return out
        after = f"&after={page['next']}"


async def test_every_change_is_recorded_with_who_what_when(broker: Broker) -> None:
    est = await estate(broker)
    alice = {"kind": "admin", "id": est.admin_id, "name": "Alice"}
    operator = {"kind": "operator", "id": None, "name": "operator"}
    p = await broker.purchase(est.id, "SO-1", quantity=10)
    broker.clock.advance(60)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p["id"], "count": 4}])
    await broker.call("PATCH", f"{base(est)}/pools/{paris['id']}", est.admin, {"name": "Paris 2"}, 200)
    code = await broker.call("POST", f"{base(est)}/pools/{paris['id']}/auth-codes", est.admin, {}, 201)
    await broker.call("DELETE", f"{base(est)}/auth-codes/{code['id']}", est.admin, status=204)
    srv = await enroll(broker, est, paris["id"], "host-9")
    await broker.call("DELETE", f"{base(est)}/servers/{srv['server_id']}", est.admin, status=204)
    bob = await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": "Bob"}, 201)
    await broker.call("DELETE", f"{base(est)}/admins/{bob['id']}", est.admin, status=204)
    await broker.call("PATCH", f"{base(est)}/purchases/{p['id']}", broker.operator, {"status": "on_hold"}, 200)
    await broker.call("DELETE", f"{base(est)}/pools/{paris['id']}", est.admin, status=204)

    got = await events(broker, est)
    assert [e["action"] for e in got] == [
        "estate.created",
        "purchase.recorded",
        "pool.created",
        "licences.moved",
        "pool.updated",
        "auth_code.created",
        "auth_code.revoked",
        "auth_code.created",
        "server.enrolled",
        "server.removed",
        "admin.added",
        "admin.removed",
        "purchase.updated",
        "pool.deleted",
    ]
    ids = [int(e["id"]) for e in got]
    assert ids == sorted(ids)  # newest last
    by = {e["action"]: e for e in got}
    assert by["estate.created"]["actor"] == operator and by["estate.created"]["at"] == format_ts(T0)
    assert by["purchase.recorded"]["details"]["quantity"] == 10
    assert by["purchase.recorded"]["pool_id"] == est.default_pool
    assert by["pool.created"]["actor"] == alice and by["pool.created"]["at"] == format_ts(T0 + 60)
    assert by["pool.updated"]["details"]["before"]["name"] == "Paris"
    assert by["pool.updated"]["details"]["after"]["name"] == "Paris 2"
    assert by["server.enrolled"]["actor"]["kind"] == "server"
    assert by["server.enrolled"]["subject_id"] == srv["server_id"]
    assert by["admin.added"]["subject_id"] == bob["id"]
    assert by["purchase.updated"]["actor"] == operator
    assert by["purchase.updated"]["details"]["before"]["status"] == "valid"
    assert by["purchase.updated"]["details"]["after"]["status"] == "on_hold"
    assert by["pool.deleted"]["details"]["returned_to_default"] == {p["id"]: 4}
    # No secret is in the log.
    text = str(got)
    assert code["code"] not in text and bob["token"] not in text and srv["server_token"] not in text


async def test_move_event_has_counts_before_and_after(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=10)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p["id"], "count": 4}])
    await broker.call(
        "POST",
        f"{base(est)}/moves",
        est.admin,
        {"from_pool": est.default_pool, "to_pool": paris["id"], "items": [{"purchase_id": p["id"], "count": 5}]},
        201,
    )
    moves = await events(broker, est, "action=licences.moved")
    assert [m["details"]["before"][p["id"]] for m in moves] == [
        {"from_allocated": 10, "to_allocated": 0},
        {"from_allocated": 6, "to_allocated": 4},
    ]
    assert [m["details"]["after"][p["id"]] for m in moves] == [
        {"from_allocated": 6, "to_allocated": 4},
        {"from_allocated": 1, "to_allocated": 9},
    ]


async def test_cursor_paging(broker: Broker) -> None:
    est = await estate(broker)
    for i in range(11):
        await broker.purchase(est.id, f"SO-{i}", quantity=1)
    everything = await events(broker, est)
    assert len(everything) == 12
    seen: list[dict[str, Any]] = []
    url = f"{base(est)}/events?limit=5"
    pages = 0
    while url:
        page = await broker.call("GET", url, est.admin, status=200)
        assert len(page["items"]) <= 5
        seen += page["items"]
        pages += 1
        url = f"{base(est)}/events?limit=5&after={page['next']}" if page["next"] else ""
    assert pages == 3 and seen == everything
    # An exact multiple of the page size ends without an empty extra page.
    page = await broker.call("GET", f"{base(est)}/events?limit=12", est.admin, status=200)
    assert len(page["items"]) == 12 and page["next"] is None
    # Nothing new after the last event.
    last = everything[-1]["id"]
    page = await broker.call("GET", f"{base(est)}/events?after={last}", est.admin, status=200)
    assert page == {"items": [], "next": None}
    # New events appear after the cursor.
    await broker.purchase(est.id, "SO-new", quantity=1)
    page = await broker.call("GET", f"{base(est)}/events?after={last}", est.admin, status=200)
    assert [e["details"]["sales_order"] for e in page["items"]] == ["SO-new"]


async def test_default_page_size_is_bounded(broker: Broker) -> None:
    est = await estate(broker)
    for i in range(120):
        await broker.purchase(est.id, f"SO-{i}", quantity=1)
    page = await broker.call("GET", f"{base(est)}/events", est.admin, status=200)
    assert len(page["items"]) == 100 and page["next"] == page["items"][-1]["id"]


async def test_filter_by_pool_and_action(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=10)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p["id"], "count": 4}])
    lyon = await new_pool(broker, est, "Lyon")
    await broker.call(
        "POST",
        f"{base(est)}/moves",
        est.admin,
        {"from_pool": paris["id"], "to_pool": lyon["id"], "items": [{"purchase_id": p["id"], "count": 1}]},
        201,
    )
    await broker.call("PATCH", f"{base(est)}/pools/{lyon['id']}", est.admin, {"lease_seconds": 600}, 200)
    paris_events = await events(broker, est, f"pool={paris['id']}")
    # Licences leaving Paris are part of its history too.
    assert [e["action"] for e in paris_events] == ["pool.created", "licences.moved", "licences.moved"]
    lyon_events = await events(broker, est, f"pool={lyon['id']}")
    assert [e["action"] for e in lyon_events] == ["pool.created", "licences.moved", "pool.updated"]
    pool_events = await events(broker, est, "action=pool")
    assert [e["action"] for e in pool_events] == ["pool.created", "pool.created", "pool.updated"]
    exact = await events(broker, est, "action=pool.updated")
    assert [e["subject_id"] for e in exact] == [lyon["id"]]
    both = await events(broker, est, f"action=licences.moved&pool={lyon['id']}")
    assert len(both) == 1
    assert await events(broker, est, "action=nothing.here") == []
    assert await events(broker, est, "pool=pool_unknown") == []


async def test_lease_events_name_the_server(broker: Broker) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, "SO-1", quantity=10)
    srv = await enroll(broker, est, est.default_pool, "enc-7")
    got = await lease(broker, srv["server_token"], "E1", 2)
    granted = await events(broker, est, "action=lease.granted")
    assert granted[0]["actor"] == {"kind": "server", "id": srv["server_id"], "name": "enc-7"}
    assert granted[0]["subject_id"] == got["id"]


async def test_events_are_per_estate(broker: Broker) -> None:
    a, b = await estate(broker, "A"), await estate(broker, "B")
    await broker.purchase(b.id, "SO-B", quantity=3)
    assert [e["action"] for e in await events(broker, a)] == ["estate.created"]
    assert [e["action"] for e in await events(broker, b)] == ["estate.created", "purchase.recorded"]
    # Another estate's cursor reveals nothing either.
    last_b = (await events(broker, b))[-1]["id"]
    page = await broker.call("GET", f"{base(a)}/events?after=0", a.admin, status=200)
    assert all(e["id"] != last_b for e in page["items"])
    r = await raw(broker, "GET", f"{base(b)}/events", a.admin)
    assert_problem(r, 404, "not_found")


async def test_failed_changes_leave_no_event(broker: Broker) -> None:
    est = await estate(broker)
    before = await events(broker, est)
    for path, body in (
        ("pools", {"name": "Default pool"}),
        ("pools/pool_x/auth-codes", {}),
        (f"pools/{est.default_pool}/auth-codes", {}),
    ):
        r = await raw(broker, "POST", f"{base(est)}/{path}", est.admin, str(body).replace("'", '"'))
        assert r.status in (404, 409)
    assert await events(broker, est) == before
