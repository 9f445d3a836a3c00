"""Acquire, grow, shrink, replace and release: capacity is exact and all-or-nothing."""

from __future__ import annotations

from tests.broker.leasing import FOUR, ONE, claims_of, make_site, seats_of, ts
from tests.conftest import DAY, Broker


async def test_n_seats_grant_n_and_refuse_the_next(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    for i in range(5):
        lease = await site.acquire(f"E{i}", 1, status=201)
        assert lease["count"] == 1
    resp = await broker.client.post(
        "/v1/leases", headers=broker.auth(site.server), json={"encoder": "E5", "licence_type": ONE, "count": 1}
    )
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "pool_exhausted"
    assert body["available"] == 0 and body["requested"] == 1 and body["licence_type"] == ONE
    view = await site.pool()
    assert (view["allocated"], view["in_use"], view["available"]) == (5, 5, 0)


async def test_refusal_says_how_many_are_available(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    await site.acquire("E1", 3, status=201)
    body = await site.acquire("E2", 3, status=409)
    assert body["code"] == "pool_exhausted" and body["available"] == 2 and body["requested"] == 3
    assert "2" in body["detail"]
    # The refused encoder holds nothing; the two seats are still there for it.
    assert await site.leases(encoder="E2") == []
    assert (await site.acquire("E2", 2, status=201))["count"] == 2


async def test_earliest_expiry_first_and_split_across_purchases(broker: Broker) -> None:
    site = await make_site(broker, [("SO-MID", 3, 100, ONE), ("SO-LATE", 5, 200, ONE), ("SO-EARLY", 2, 50, ONE)])
    first = await site.acquire("E1", 4, status=201)
    assert seats_of(first) == {"SO-EARLY": 2, "SO-MID": 2}
    assert [s["sales_order"] for s in first["seats"]] == ["SO-EARLY", "SO-MID"]
    second = await site.acquire("E2", 3, status=201)
    assert seats_of(second) == {"SO-MID": 1, "SO-LATE": 2}
    view = await site.pool()
    by_so = {h["sales_order"]: h["in_use"] for h in view["holdings"]}
    assert by_so == {"SO-EARLY": 2, "SO-MID": 3, "SO-LATE": 2}
    assert view["in_use"] == 7 and view["available"] == 3
    # The token's expiry is bounded by the earliest purchase (all far away here: the
    # pool's lifetime decides).
    assert claims_of(first["token"])["exp"] == ts(first["expires_at"])


async def test_shrink_gives_back_the_latest_expiring_first(broker: Broker) -> None:
    site = await make_site(broker, [("SO-EARLY", 2, 50, ONE), ("SO-MID", 3, 100, ONE), ("SO-LATE", 5, 200, ONE)])
    lease = await site.acquire("E1", 8, status=201)
    assert seats_of(lease) == {"SO-EARLY": 2, "SO-MID": 3, "SO-LATE": 3}
    shrunk = await site.acquire("E1", 4, status=200)
    assert shrunk["id"] == lease["id"]
    assert seats_of(shrunk) == {"SO-EARLY": 2, "SO-MID": 2}
    assert (await site.holding("SO-LATE"))["in_use"] == 0
    assert (await site.holding("SO-MID"))["in_use"] == 2
    # Growing again takes the earliest-expiring free seat first.
    grown = await site.acquire("E1", 5, status=200)
    assert seats_of(grown) == {"SO-EARLY": 2, "SO-MID": 3}


async def test_acquire_is_idempotent_per_server_and_encoder(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    first = await broker.client.post(
        "/v1/leases", headers=broker.auth(site.server), json={"encoder": "E1", "licence_type": ONE, "count": 2}
    )
    assert first.status == 201
    again = await broker.client.post(
        "/v1/leases", headers=broker.auth(site.server), json={"encoder": "E1", "licence_type": ONE, "count": 2}
    )
    assert again.status == 200
    a, b = await first.json(), await again.json()
    assert a["id"] == b["id"] and b["count"] == 2
    assert (await site.pool())["in_use"] == 2
    assert len(await site.leases()) == 1
    # Another server's encoder of the same serial is another lease.
    other = await site.enrol("host-2")
    c = await site.acquire("E1", 1, status=201, token=other["server_token"])
    assert c["id"] != a["id"]
    assert (await site.pool())["in_use"] == 3


async def test_grow_and_shrink_move_the_pool_counts(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 6, 365, ONE)])
    lease = await site.acquire("E1", 2, status=201)
    grown = await site.acquire("E1", 5, status=200)
    assert grown["id"] == lease["id"] and grown["count"] == 5
    assert claims_of(grown["token"])["n"] == 5
    assert (await site.pool())["in_use"] == 5
    shrunk = await site.acquire("E1", 1, status=200)
    assert shrunk["count"] == 1 and claims_of(shrunk["token"])["n"] == 1
    view = await site.pool()
    assert view["in_use"] == 1 and view["available"] == 5
    # The freed seats are really free: another encoder takes all five.
    await site.acquire("E2", 5, status=201)


async def test_a_grow_that_cannot_be_covered_leaves_the_lease_as_it_was(broker: Broker) -> None:
    site = await make_site(broker, [("SO-A", 2, 100, ONE), ("SO-B", 3, 200, ONE)])
    lease = await site.acquire("E1", 3, status=201)
    await site.acquire("E2", 1, status=201)
    before = (await site.leases(encoder="E1"))[0]
    broker.clock.advance(60)
    body = await site.acquire("E1", 5, status=409)
    assert body["code"] == "pool_exhausted" and body["available"] == 1 and body["requested"] == 2
    after = (await site.leases(encoder="E1"))[0]
    assert after == before  # count, expiry and renewal time untouched
    assert (await site.pool())["in_use"] == 4
    renewed = await site.renew(lease["id"], status=200)
    assert renewed["count"] == 3 and seats_of(renewed) == {"SO-A": 2, "SO-B": 1}
    # The one free seat is still free.
    await site.acquire("E3", 1, status=201)


async def test_another_type_replaces_the_lease_atomically(broker: Broker) -> None:
    site = await make_site(broker, [("SO-ONE", 3, 365, ONE), ("SO-FOUR", 2, 365, FOUR)])
    lease = await site.acquire("E1", 3, status=201)
    replaced = await site.acquire("E1", 2, FOUR, status=200)
    assert replaced["id"] == lease["id"]
    assert replaced["licence_type"] == FOUR and replaced["count"] == 2
    assert seats_of(replaced) == {"SO-FOUR": 2}
    assert claims_of(replaced["token"])["lt"] == FOUR
    view = await site.pool()
    assert view["by_type"][ONE]["in_use"] == 0 and view["by_type"][FOUR]["in_use"] == 2
    # The old type's seats went back: another encoder takes all three.
    await site.acquire("E2", 3, ONE, status=201)
    changed = [e for e in await site.events("lease.changed") if e["subject_id"] == lease["id"]]
    assert changed[-1]["details"]["before"] == {"licence_type": ONE, "count": 3}
    assert changed[-1]["details"]["after"] == {"licence_type": FOUR, "count": 2}


async def test_a_refused_replacement_keeps_the_old_lease(broker: Broker) -> None:
    site = await make_site(broker, [("SO-ONE", 3, 365, ONE), ("SO-FOUR", 2, 365, FOUR)])
    lease = await site.acquire("E1", 3, ONE, status=201)
    await site.acquire("E2", 2, FOUR, status=201)
    body = await site.acquire("E1", 1, FOUR, status=409)
    assert body["code"] == "pool_exhausted" and body["licence_type"] == FOUR
    held = (await site.leases(encoder="E1"))[0]
    assert held["licence_type"] == ONE and held["count"] == 3
    view = await site.pool()
    assert view["by_type"][ONE]["in_use"] == 3 and view["by_type"][FOUR]["in_use"] == 2
    renewed = await site.renew(lease["id"], status=200)
    assert renewed["licence_type"] == ONE and seats_of(renewed) == {"SO-ONE": 3}


async def test_count_zero_releases(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 3, 365, ONE)])
    lease = await site.acquire("E1", 3, status=201)
    resp = await broker.client.post(
        "/v1/leases", headers=broker.auth(site.server), json={"encoder": "E1", "licence_type": ONE, "count": 0}
    )
    assert resp.status == 204
    assert await resp.read() == b""
    view = await site.pool()
    assert view["in_use"] == 0 and view["available"] == 3
    assert await site.leases() == []
    gone = await site.renew(lease["id"], status=410)
    assert gone["code"] == "lease_gone" and gone["reason"] == "released"
    # count 0 for an encoder that holds nothing is a quiet no-op.
    assert await site.acquire("NOBODY", 0, status=204) is None
    # A new acquire for the released encoder is a new lease.
    fresh = await site.acquire("E1", 1, status=201)
    assert fresh["id"] != lease["id"]


async def test_release_is_idempotent_and_frees_seats(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    lease = await site.acquire("E1", 2, status=201)
    await site.release(lease["id"])
    await site.release(lease["id"])
    assert (await site.pool())["in_use"] == 0
    await site.acquire("E2", 2, status=201)
    released = [e for e in await site.events("lease.released") if e["subject_id"] == lease["id"]]
    assert len(released) == 1  # the second DELETE changed nothing
    missing = await site.release("lse_nosuchlease", status=404)
    assert missing["code"] == "not_found"


async def test_seats_come_only_from_the_servers_pool(broker: Broker) -> None:
    # 10 bought, 2 moved to Paris, 8 stay in the Default Pool.
    site = await make_site(broker, [("SO-1", 10, 365, ONE)], move={"SO-1": 2})
    body = await site.acquire("E1", 3, status=409)
    assert body["available"] == 2
    await site.acquire("E1", 2, status=201)
    default = await site.pool(site.default_pool_id)
    assert default["in_use"] == 0 and default["available"] == 8


async def test_seats_come_only_from_purchases_of_that_type(broker: Broker) -> None:
    site = await make_site(broker, [("SO-FOUR", 4, 365, FOUR), ("SO-ONE", 2, 365, ONE)])
    await site.acquire("E0", 2, ONE, status=201)
    body = await site.acquire("E1", 1, ONE, status=409)
    assert body["code"] == "pool_exhausted" and body["available"] == 0
    assert (await site.acquire("E1", 4, FOUR, status=201))["licence_type"] == FOUR


async def test_a_type_the_pool_holds_none_of_is_not_a_shortage(broker: Broker) -> None:
    # The Default Pool keeps the one-in-one-out licences; Paris holds only four-in-one-out.
    site = await make_site(broker, [("SO-FOUR", 4, 365, FOUR), ("SO-ONE", 5, 365, ONE)], move={"SO-FOUR": 4})
    body = await site.acquire("E1", 1, ONE, status=409)
    assert body["code"] == "licence_type_not_in_pool"
    assert body["licence_type"] == ONE and body["types"] == [FOUR]
    assert body["detail"] == f"The pool holds no {ONE} licences; it holds {FOUR}."
    assert "available" not in body
    assert await site.leases(encoder="E1") == []


async def test_asking_an_empty_pool_lists_no_types(broker: Broker) -> None:
    site = await make_site(broker, [("SO-ONE", 5, 365, ONE)], move={"SO-ONE": 1})
    lease = await site.acquire("E1", 1, ONE, status=201)
    await site.release(lease["id"])
    await broker.call(
        "POST",
        f"/v1/estates/{site.estate_id}/moves",
        site.admin,
        {
            "from_pool": site.pool_id,
            "to_pool": site.default_pool_id,
            "items": [{"purchase_id": site.purchases["SO-ONE"]["id"], "count": 1}],
        },
        201,
    )
    body = await site.acquire("E1", 1, ONE, status=409)
    assert body["code"] == "licence_type_not_in_pool" and body["types"] == []


async def test_a_held_type_that_cannot_be_granted_is_still_pool_exhausted(broker: Broker) -> None:
    site = await make_site(broker, [("SO-ONE", 2, 30, ONE), ("SO-FOUR", 2, 365, FOUR)])
    await site.acquire("E1", 2, FOUR, status=201)  # all in use
    assert (await site.acquire("E2", 1, FOUR, status=409))["code"] == "pool_exhausted"
    await site.set_purchase("SO-ONE", status="on_hold")
    assert (await site.acquire("E3", 1, ONE, status=409))["code"] == "pool_exhausted"
    await site.set_purchase("SO-ONE", status="valid")
    broker.clock.advance(31 * DAY)  # expired
    assert (await site.acquire("E3", 1, ONE, status=409))["code"] == "pool_exhausted"
    broker.clock.advance(31 * DAY)  # past its grace, still held
    body = await site.acquire("E3", 1, ONE, status=409)
    assert body["code"] == "pool_exhausted" and body["available"] == 0


async def test_replacing_with_a_type_the_pool_lacks_keeps_the_old_lease(broker: Broker) -> None:
    site = await make_site(broker, [("SO-ONE", 3, 365, ONE)])
    await site.acquire("E1", 3, ONE, status=201)
    body = await site.acquire("E1", 1, FOUR, status=409)
    assert body["code"] == "licence_type_not_in_pool" and body["types"] == [ONE]
    held = (await site.leases(encoder="E1"))[0]
    assert held["licence_type"] == ONE and held["count"] == 3


async def test_lease_response_shape(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    lease = await site.acquire("E1", 1, status=201)
    for key in ("id", "token", "count", "licence_type", "expires_at", "renew_after", "server_time", "seats"):
        assert key in lease, key
    assert lease["server_time"] == "2027-01-01T00:00:00Z"
    assert lease["expires_at"] == "2027-01-01T01:00:00Z"  # default lifetime: 1 hour
    assert lease["renew_after"] == "2027-01-01T00:20:00Z"  # a third of it
    assert lease["seats"][0]["purchase_id"] == site.purchases["SO-1"]["id"]


async def test_bad_acquire_requests(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    for body in (
        {"encoder": "E1", "licence_type": ONE, "count": 10_001},
        {"encoder": "E1", "licence_type": ONE, "count": -1},
        {"encoder": "bad serial!", "licence_type": ONE, "count": 1},
        {"encoder": "E1", "licence_type": "One In", "count": 1},
        {"encoder": "E1", "licence_type": ONE},
        {"encoder": "E1", "licence_type": ONE, "count": 1, "extra": 1},
    ):
        problem = await broker.call("POST", "/v1/leases", site.server, body, 400)
        assert problem["code"] == "validation_error"
    assert (await broker.call("POST", "/v1/leases", None, {"encoder": "E1", "licence_type": ONE, "count": 1}, 401))[
        "code"
    ] == "unauthenticated"
    assert (
        await broker.call("POST", "/v1/leases", site.admin, {"encoder": "E1", "licence_type": ONE, "count": 1}, 403)
    )["code"] == "forbidden"
    assert (await site.pool())["in_use"] == 0


async def test_another_estates_server_touches_nothing_here(broker: Broker) -> None:
    here = await make_site(broker, [("SO-1", 3, 365, ONE)])
    there = await make_site(broker, [("SO-9", 1, 365, ONE)], estate_name="Rival")
    lease = await here.acquire("E1", 2, status=201)
    intruder = there.server
    assert (await here.renew(lease["id"], status=404, token=intruder))["code"] == "not_found"
    assert (await here.release(lease["id"], status=404, token=intruder))["code"] == "not_found"
    # Same encoder serial over there is a lease of that estate's pool, not of this one.
    theirs = await here.acquire("E1", 1, status=201, token=intruder)
    assert theirs["id"] != lease["id"] and theirs["pool_id"] == there.pool_id
    assert (await here.acquire("E2", 1, status=409, token=intruder))["available"] == 0
    # No admin route answers a server token.
    for path in (
        f"/v1/estates/{here.estate_id}/leases",
        f"/v1/estates/{here.estate_id}/pools",
        f"/v1/estates/{here.estate_id}/servers",
    ):
        assert (await broker.call("GET", path, intruder, status=403))["code"] == "forbidden"
    await broker.call("DELETE", f"/v1/estates/{here.estate_id}/leases/{lease['id']}", intruder, status=403)
    # The other estate's admin cannot force-release it either.
    await broker.call("DELETE", f"/v1/estates/{there.estate_id}/leases/{lease['id']}", there.admin, status=404)
    held = await here.leases()
    assert [(x["id"], x["count"]) for x in held] == [(lease["id"], 2)]
    assert (await here.renew(lease["id"], status=200))["count"] == 2


async def test_another_servers_lease_is_not_found(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 3, 365, ONE)])
    other = await site.enrol("host-2")
    lease = await site.acquire("E1", 2, status=201)
    token = other["server_token"]
    assert (await site.renew(lease["id"], status=404, token=token))["code"] == "not_found"
    await site.release(lease["id"], status=404, token=token)
    # The same serial on the other server is its own lease, beside this one.
    theirs = await site.acquire("E1", 1, status=201, token=token)
    assert theirs["id"] != lease["id"]
    assert (await site.renew(lease["id"], status=200))["count"] == 2
