"""Servers and domains as admins see them: list, rebind, remove (lease rules are tested
with the leases; here only what removal and rebinding must do to them)."""

from __future__ import annotations

import json

from tests.broker.estate_kit import Estate, assert_problem, base, enroll, estate, lease, new_pool, pools, raw
from tests.conftest import T0, Broker


async def stocked(broker: Broker) -> tuple[Estate, dict[str, object]]:
    est = await estate(broker)
    p = await broker.purchase(est.id, "SO-1", quantity=10)
    return est, p


async def test_list_servers_and_domains(broker: Broker) -> None:
    est, p = await stocked(broker)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p["id"], "count": 5}])
    s1 = await enroll(broker, est, paris["id"], "b-host")
    s2 = await enroll(broker, est, est.default_pool, "a-tenant", kind="domain")
    broker.clock.advance(10)
    await lease(broker, s1["server_token"], "E1", 3)
    got = await broker.call("GET", f"{base(est)}/servers", est.admin, status=200)
    assert got["items"] == [
        {
            "id": s2["server_id"],
            "name": "a-tenant",
            "kind": "domain",
            "pool_id": est.default_pool,
            "enrolled_at": "2027-01-01T00:00:00Z",
            "last_seen_at": "2027-01-01T00:00:00Z",
            "in_use": 0,
            "leases": 0,
            "limits": {},
        },
        {
            "id": s1["server_id"],
            "name": "b-host",
            "kind": "server",
            "pool_id": paris["id"],
            "enrolled_at": "2027-01-01T00:00:00Z",
            "last_seen_at": "2027-01-01T00:00:10Z",
            "in_use": 3,
            "leases": 1,
            "limits": {},
        },
    ]
    only = await broker.call("GET", f"{base(est)}/servers?pool={paris['id']}", est.admin, status=200)
    assert [s["id"] for s in only["items"]] == [s1["server_id"]]
    assert T0  # the clock starts at T0


async def test_list_servers_empty_and_bad_filter(broker: Broker) -> None:
    est, _ = await stocked(broker)
    assert (await broker.call("GET", f"{base(est)}/servers", est.admin, status=200))["items"] == []
    r = await raw(broker, "GET", f"{base(est)}/servers?pool=../x", est.admin)
    assert_problem(r, 400, "validation_error")


async def test_rebind_server_to_another_pool(broker: Broker) -> None:
    est, p = await stocked(broker)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p["id"], "count": 5}])
    srv = await enroll(broker, est, est.default_pool)
    await broker.call("GET", "/v1/me", srv["server_token"], status=200)  # cache the token
    got = await broker.call(
        "PATCH", f"{base(est)}/servers/{srv['server_id']}", est.admin, {"pool_id": paris["id"]}, 200
    )
    assert got["pool_id"] == paris["id"] and got["id"] == srv["server_id"]
    me = await broker.call("GET", "/v1/me", srv["server_token"], status=200)
    assert me["pool_id"] == paris["id"]
    # Its next lease comes from the new pool.
    await lease(broker, srv["server_token"], "E1", 2)
    views = await pools(broker, est)
    assert (views["Paris"]["in_use"], views["Default Pool"]["in_use"]) == (2, 0)
    events = await broker.call("GET", f"{base(est)}/events?action=server.rebound", est.admin, status=200)
    assert events["items"][0]["details"]["before"] == {"pool_id": est.default_pool}
    assert events["items"][0]["details"]["after"] == {"pool_id": paris["id"]}


async def test_rebind_refused_while_holding_leases(broker: Broker) -> None:
    est, p = await stocked(broker)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p["id"], "count": 5}])
    srv = await enroll(broker, est, est.default_pool)
    await lease(broker, srv["server_token"], "E1", 2)
    r = await raw(
        broker, "PATCH", f"{base(est)}/servers/{srv['server_id']}", est.admin, json.dumps({"pool_id": paris["id"]})
    )
    body = assert_problem(r, 409, "server_has_leases")
    assert body["leases"] == 1
    got = await broker.call("GET", f"{base(est)}/servers", est.admin, status=200)
    assert got["items"][0]["pool_id"] == est.default_pool
    # Once the lease is released, it may move.
    await lease(broker, srv["server_token"], "E1", 0, status=204)
    await broker.call("PATCH", f"{base(est)}/servers/{srv['server_id']}", est.admin, {"pool_id": paris["id"]}, 200)


async def test_rebind_to_unknown_or_foreign_pool_is_404(broker: Broker) -> None:
    est, _ = await stocked(broker)
    other = await estate(broker, "Other")
    srv = await enroll(broker, est, est.default_pool)
    for pool_id in ("pool_nope", other.default_pool):
        r = await raw(
            broker, "PATCH", f"{base(est)}/servers/{srv['server_id']}", est.admin, json.dumps({"pool_id": pool_id})
        )
        assert_problem(r, 404, "not_found")
    r = await raw(
        broker, "PATCH", f"{base(est)}/servers/srv_nope", est.admin, json.dumps({"pool_id": est.default_pool})
    )
    assert_problem(r, 404, "not_found")
    r = await raw(broker, "PATCH", f"{base(est)}/servers/{srv['server_id']}", est.admin, "{}")
    assert_problem(r, 400, "validation_error")


async def test_remove_server_stops_its_token(broker: Broker) -> None:
    est, _ = await stocked(broker)
    srv = await enroll(broker, est, est.default_pool)
    await broker.call("GET", "/v1/me", srv["server_token"], status=200)  # cached
    await broker.call("DELETE", f"{base(est)}/servers/{srv['server_id']}", est.admin, status=204)
    acquire = '{"encoder": "E", "licence_type": "one-in-one-out", "count": 1}'
    for method, path, body in (("GET", "/v1/me", None), ("POST", "/v1/leases", acquire)):
        r = await raw(broker, method, path, srv["server_token"], body)
        assert_problem(r, 401, "unauthenticated")
    assert (await broker.call("GET", f"{base(est)}/servers", est.admin, status=200))["items"] == []
    r = await raw(broker, "DELETE", f"{base(est)}/servers/{srv['server_id']}", est.admin)
    assert_problem(r, 404, "not_found")


async def test_remove_server_frees_its_licences_at_once(broker: Broker) -> None:
    est, _ = await stocked(broker)
    srv = await enroll(broker, est, est.default_pool)
    keep = await enroll(broker, est, est.default_pool, "other-host")
    await lease(broker, srv["server_token"], "E1", 4)
    await lease(broker, srv["server_token"], "E2", 3)
    await lease(broker, keep["server_token"], "E3", 1)
    assert (await pools(broker, est))["Default Pool"]["available"] == 2
    await broker.call("DELETE", f"{base(est)}/servers/{srv['server_id']}", est.admin, status=204)
    view = (await pools(broker, est))["Default Pool"]
    assert (view["in_use"], view["available"]) == (1, 9)
    # Revoked tokens not yet expired are shown to admins.
    assert view["revoked_unexpired"] == 7
    events = await broker.call("GET", f"{base(est)}/events?action=server.removed", est.admin, status=200)
    assert events["items"][0]["details"]["leases_freed"] == 2
    # The freed seats can be taken by another server right away.
    await lease(broker, keep["server_token"], "E4", 9)


async def test_remove_server_of_another_estate_is_404(broker: Broker) -> None:
    est, _ = await stocked(broker)
    other = await estate(broker, "Other")
    srv = await enroll(broker, est, est.default_pool)
    r = await raw(broker, "DELETE", f"{base(other)}/servers/{srv['server_id']}", other.admin)
    assert_problem(r, 404, "not_found")
    await broker.call("GET", "/v1/me", srv["server_token"], status=200)
