"""Licence policies over HTTP: the anti-cycling soft-lock and per-server limits and
reservations (docs/design.md, "Licence policies"), on both stores, driven by the clock."""

from __future__ import annotations

from typing import Any

from tests.broker.leasing import FOUR, ONE, Site, make_site, seats_of, ts
from tests.conftest import DAY, Broker

HOUR = 3600


async def acquire(
    site: Site,
    encoder: str,
    count: int,
    *,
    kind: str | None = None,
    token: str | None = None,
    status: int | None = None,
    licence_type: str = ONE,
) -> Any:
    body: dict[str, Any] = {"encoder": encoder, "licence_type": licence_type, "count": count}
    if kind is not None:
        body["encoder_kind"] = kind
    return await site.broker.call("POST", "/v1/leases", token or site.server, body, status)


async def set_windows(site: Site, status: int = 200, pool_id: str | None = None, **seconds: int) -> Any:
    return await site.broker.call(
        "PATCH",
        f"/v1/estates/{site.estate_id}/pools/{pool_id or site.pool_id}",
        site.admin,
        {"soft_lock_seconds": seconds},
        status,
    )


async def set_limits(site: Site, server_id: str, limits: dict[str, Any], status: int = 200) -> Any:
    return await site.broker.call(
        "PATCH", f"/v1/estates/{site.estate_id}/servers/{server_id}", site.admin, {"limits": limits}, status
    )


async def counts(site: Site, licence_type: str = ONE) -> tuple[int, int, int]:
    """(in use, available, soft-locked) of the type in the site's pool."""
    per = (await site.pool())["by_type"][licence_type]
    return per["in_use"], per["available"], per["soft_locked"]


# -- soft-lock ----------------------------------------------------------------


async def test_the_worked_example_released_on_day_3_refused_to_another_back_to_the_first(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    await site.set_lease_seconds(7 * DAY)  # renewed all along, as an agent would
    view = await set_windows(site, hardware=45 * DAY, container=30 * 60)
    assert view["soft_lock_seconds"] == {"hardware": 45 * DAY, "container": 30 * 60}
    first = await acquire(site, "ENC-1", 2, status=201)
    [row] = await site.leases()
    assert row["encoder_kind"] == "hardware"
    assert ts(row["soft_lock_until"]) == broker.clock.now() + 45 * DAY

    broker.clock.advance(3 * DAY)
    await acquire(site, "ENC-1", 0, status=204)
    assert await counts(site) == (0, 0, 2)
    pool = await site.pool()
    [held] = pool["soft_locks"]
    assert held["encoder"] == "ENC-1" and held["count"] == 2 and held["kind"] == "hardware"
    assert ts(held["until"]) == ts(row["soft_lock_until"]) and held["lease_id"] == first["id"]
    assert pool["holdings"][0]["soft_locked"] == 2 and pool["holdings"][0]["unused"] == 0

    refused = await acquire(site, "ENC-2", 1, status=409)
    assert refused["code"] == "pool_exhausted"
    assert (refused["available"], refused["soft_locked"]) == (0, 2)
    assert "2 seats are soft-locked" in refused["detail"]

    back = await acquire(site, "ENC-1", 2, status=201)
    assert seats_of(back) == {"SO-1": 2}
    assert await counts(site) == (2, 0, 0)
    released = (await site.events("lease.released"))[-1]
    assert released["details"]["soft_locked"] == 2


async def test_a_shrink_holds_the_seats_given_back_and_the_encoder_takes_its_own_first(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 4, 365, ONE)])
    await set_windows(site, hardware=45 * DAY)
    await acquire(site, "ENC-1", 3, status=201)
    await acquire(site, "ENC-1", 1, status=200)
    assert await counts(site) == (1, 1, 2)
    await acquire(site, "ENC-2", 1, status=201)  # the one free seat
    await acquire(site, "ENC-3", 1, status=409)
    grown = await acquire(site, "ENC-1", 3, status=200)
    assert grown["count"] == 3
    assert await counts(site) == (4, 0, 0)


async def test_container_windows_are_their_own_and_end_on_time(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 1, 365, ONE)])
    await set_windows(site, hardware=45 * DAY, container=30 * 60)
    await acquire(site, "CT-1", 1, kind="container", status=201)
    [row] = await site.leases()
    assert row["encoder_kind"] == "container"
    assert ts(row["soft_lock_until"]) == broker.clock.now() + 30 * 60
    await acquire(site, "CT-1", 0, status=204)
    broker.clock.advance(29 * 60)
    await acquire(site, "CT-2", 1, kind="container", status=409)
    broker.clock.advance(60)
    assert await counts(site) == (0, 1, 0)
    await acquire(site, "CT-2", 1, kind="container", status=201)


async def test_the_kind_is_the_one_said_at_the_first_grant(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    await set_windows(site, hardware=45 * DAY, container=60)
    await acquire(site, "ENC-1", 1, kind="container", status=201)
    await acquire(site, "ENC-1", 0, status=204)
    await acquire(site, "ENC-1", 1, kind="hardware", status=201)  # takes its held seat back
    [row] = await site.leases()
    assert row["encoder_kind"] == "container"
    broker.clock.advance(61)
    [row] = await site.leases()
    assert row["soft_lock_until"] is None


async def test_windows_follow_the_pool_setting_and_a_longer_one_brings_nothing_back(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    await set_windows(site, hardware=45 * DAY)
    await acquire(site, "ENC-1", 2, status=201)
    broker.clock.advance(3 * DAY)
    await acquire(site, "ENC-1", 0, status=204)
    await set_windows(site, hardware=2 * DAY)  # the window ended a day ago: free at once
    assert await counts(site) == (0, 2, 0)
    await acquire(site, "ENC-2", 2, status=201)
    await set_windows(site, hardware=45 * DAY)
    assert await counts(site) == (2, 0, 0)
    await acquire(site, "ENC-2", 0, status=204)
    assert await counts(site) == (0, 0, 2)  # ENC-2's own window holds them now
    await set_windows(site, hardware=0)
    assert await counts(site) == (0, 2, 0)
    event = (await site.events("pool.updated"))[-1]
    assert event["details"]["before"]["soft_lock_seconds"]["hardware"] == 45 * DAY
    assert event["details"]["after"]["soft_lock_seconds"]["hardware"] == 0


async def test_the_window_runs_from_the_first_grant_not_from_the_release(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 1, 365, ONE)])
    await set_windows(site, hardware=10 * DAY)
    await site.set_lease_seconds(20 * DAY)
    lease = await acquire(site, "ENC-1", 1, status=201)
    broker.clock.advance(11 * DAY)  # kept alive past its window
    await site.renew(lease["id"], status=200)
    await acquire(site, "ENC-1", 0, status=204)
    assert await counts(site) == (0, 1, 0)
    await acquire(site, "ENC-2", 1, status=201)


async def test_a_lapse_inside_the_window_holds_the_seats(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 1, 365, ONE)])
    await set_windows(site, hardware=45 * DAY)
    await acquire(site, "ENC-1", 1, status=201)
    broker.clock.advance(2 * DAY)  # well past the lease's hour
    refused = await acquire(site, "ENC-2", 1, status=409)
    assert refused["soft_locked"] == 1
    await acquire(site, "ENC-1", 1, status=201)
    assert (await site.events("lease.lapsed"))[-1]["details"]["soft_locked"] == 1


async def test_moves_cannot_take_soft_locked_seats(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 3, 365, ONE)])
    await set_windows(site, hardware=45 * DAY)
    await acquire(site, "ENC-1", 2, status=201)
    await acquire(site, "ENC-1", 0, status=204)
    move = {
        "from_pool": site.pool_id,
        "to_pool": site.default_pool_id,
        "items": [{"purchase_id": site.purchases["SO-1"]["id"], "count": 2}],
    }
    refused = await broker.call("POST", f"/v1/estates/{site.estate_id}/moves", site.admin, move, 409)
    assert refused["code"] == "licences_in_use" and refused["items"][0]["unused"] == 1
    move["items"][0]["count"] = 1
    await broker.call("POST", f"/v1/estates/{site.estate_id}/moves", site.admin, move, 201)


async def test_force_release_holds_unless_overridden_and_the_override_is_audited(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    await set_windows(site, hardware=45 * DAY)
    a = await acquire(site, "ENC-1", 1, status=201)
    b = await acquire(site, "ENC-2", 1, status=201)
    base = f"/v1/estates/{site.estate_id}/leases"
    await broker.call("DELETE", f"{base}/{a['id']}", site.admin, None, 204)
    assert await counts(site) == (1, 0, 1)
    await broker.call("DELETE", f"{base}/{b['id']}?override_soft_lock=true", site.admin, None, 204)
    assert await counts(site) == (0, 1, 1)
    revoked = (await site.events("lease.revoked"))[-1]
    assert revoked["details"]["override_soft_lock"] is True and revoked["subject_id"] == b["id"]
    # On a lease already ended, the override frees what is held for its encoder.
    await broker.call("DELETE", f"{base}/{a['id']}?override_soft_lock=true", site.admin, None, 204)
    assert await counts(site) == (0, 2, 0)
    [event] = await site.events("soft_lock.overridden")
    assert event["details"] == {"encoder": "ENC-1", "soft_lock_freed": 1}
    await broker.call("DELETE", f"{base}/{a['id']}?override_soft_lock=maybe", site.admin, None, 400)


async def test_removing_a_server_holds_its_encoders_seats_unless_overridden(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    await set_windows(site, hardware=45 * DAY)
    other = await site.enrol("host-2")
    third = await site.enrol("host-3")
    await acquire(site, "ENC-1", 1, status=201)
    await acquire(site, "ENC-2", 1, token=other["server_token"], status=201)
    servers = f"/v1/estates/{site.estate_id}/servers"
    await broker.call("DELETE", f"{servers}/{site.server_id}", site.admin, None, 204)
    await broker.call("DELETE", f"{servers}/{other['server_id']}?override_soft_lock=true", site.admin, None, 204)
    assert await counts(site) == (0, 1, 1)
    assert (await site.events("server.removed"))[-1]["details"]["override_soft_lock"] is True
    # The encoder comes back through another server of the pool: its seat is there for it.
    await acquire(site, "ENC-3", 2, token=third["server_token"], status=409)
    await acquire(site, "ENC-1", 1, token=third["server_token"], status=201)
    await acquire(site, "ENC-3", 1, token=third["server_token"], status=201)


async def test_soft_lock_and_kind_are_validated(broker: Broker) -> None:
    site = await make_site(broker)
    bad = await set_windows(site, status=400, hardware=90 * DAY + 1)
    assert bad["errors"][0]["field"] == "soft_lock_seconds.hardware"
    await set_windows(site, status=400, desktop=60)
    await set_windows(site, hardware=90 * DAY)
    refused = await acquire(site, "ENC-1", 1, kind="laptop", status=400)
    assert refused["errors"][0]["field"] == "encoder_kind"


async def test_without_windows_a_release_frees_at_once(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 1, 365, ONE)])
    assert (await site.pool())["soft_lock_seconds"] == {"hardware": 0, "container": 0}
    await acquire(site, "ENC-1", 1, status=201)
    await acquire(site, "ENC-1", 0, status=204)
    await acquire(site, "ENC-2", 1, status=201)


# -- limits and reservations ---------------------------------------------------


async def test_max_caps_what_a_server_holds_and_a_lowered_max_still_lets_it_shrink(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 10, 365, ONE)])
    got = await set_limits(site, site.server_id, {ONE: {"max": 3}})
    assert got["limits"] == {ONE: {"max": 3, "reserved": 0}}
    await acquire(site, "ENC-1", 2, status=201)
    refused = await acquire(site, "ENC-2", 2, status=409)
    assert refused["code"] == "server_limit"
    assert (refused["max"], refused["in_use"], refused["requested"]) == (3, 2, 2)
    await acquire(site, "ENC-2", 1, status=201)
    await set_limits(site, site.server_id, {ONE: {"max": 1}})
    await acquire(site, "ENC-1", 1, status=200)  # a shrink is never refused
    await acquire(site, "ENC-1", 2, status=409)
    await set_limits(site, site.server_id, {ONE: None})
    await acquire(site, "ENC-1", 5, status=200)
    assert (await site.servers())[0]["limits"] == {}


async def test_a_reservation_keeps_seats_for_its_server(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    other = await site.enrol("host-2", kind="domain")  # a domain takes limits as a server does
    got = await set_limits(site, other["server_id"], {ONE: {"reserved": 2, "max": 4}})
    assert got["kind"] == "domain" and got["limits"] == {ONE: {"max": 4, "reserved": 2}}
    pool = await site.pool()
    assert pool["reserved"] == 2 and pool["by_type"][ONE]["reserved"] == 2
    assert pool["limits"] == [
        {
            "server_id": other["server_id"],
            "server_name": "host-2",
            "licence_type": ONE,
            "max": 4,
            "reserved": 2,
            "in_use": 0,
        }
    ]
    refused = await acquire(site, "ENC-1", 4, status=409)
    assert refused["code"] == "pool_exhausted" and (refused["available"], refused["reserved"]) == (3, 2)
    await acquire(site, "ENC-1", 3, status=201)
    await acquire(site, "ENC-D1", 1, token=other["server_token"], status=201)
    await acquire(site, "ENC-1", 4, status=409)  # one reserved seat is still unused
    await acquire(site, "ENC-D2", 1, token=other["server_token"], status=201)
    assert (await site.pool())["limits"][0]["in_use"] == 2


async def test_reservations_never_exceed_the_pools_holding(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE), ("SO-4", 2, 365, FOUR)])
    other = await site.enrol("host-2")
    refused = await set_limits(site, site.server_id, {ONE: {"reserved": 6}}, status=409)
    assert refused["code"] == "reservation_exceeds_pool"
    assert (refused["reserved"], refused["holding"], refused["licence_type"]) == (6, 5, ONE)
    await set_limits(site, site.server_id, {ONE: {"reserved": 3}, FOUR: {"reserved": 2}})
    await set_limits(site, other["server_id"], {ONE: {"reserved": 3}}, status=409)
    await set_limits(site, other["server_id"], {ONE: {"reserved": 2}})
    await set_limits(site, site.server_id, {"no-such-type": {"reserved": 1}}, status=409)
    # Nothing of a refused PATCH is kept.
    assert (await site.pool())["by_type"][ONE]["reserved"] == 5


async def test_moves_cannot_take_reserved_seats(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    other = await site.enrol("host-2")
    await set_limits(site, other["server_id"], {ONE: {"reserved": 2}})
    await acquire(site, "ENC-1", 2, status=201)
    moves = f"/v1/estates/{site.estate_id}/moves"
    item = {"purchase_id": site.purchases["SO-1"]["id"], "count": 2}
    move = {"from_pool": site.pool_id, "to_pool": site.default_pool_id, "items": [item]}
    refused = await broker.call("POST", moves, site.admin, move, 409)
    assert refused["code"] == "licences_in_use" and refused["reserved"] == 2
    item["count"] = 1
    await broker.call("POST", moves, site.admin, move, 201)
    await acquire(site, "ENC-1", 0, status=204)
    item["count"] = 3  # all free now, but the pool would hold 1 against a reservation of 2
    refused = await broker.call("POST", moves, site.admin, move, 409)
    assert refused["code"] == "reservation_exceeds_pool"
    item["count"] = 2
    await broker.call("POST", moves, site.admin, move, 201)


async def test_a_rebind_takes_the_reservations_along_and_they_must_fit(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)], move={"SO-1": 2})
    await set_limits(site, site.server_id, {ONE: {"reserved": 3}}, status=409)
    await set_limits(site, site.server_id, {ONE: {"reserved": 2}})
    other = await site.enrol("host-2", pool_id=site.default_pool_id)
    await set_limits(site, other["server_id"], {ONE: {"reserved": 2}})
    servers = f"/v1/estates/{site.estate_id}/servers"
    refused = await broker.call("PATCH", f"{servers}/{other['server_id']}", site.admin, {"pool_id": site.pool_id}, 409)
    assert refused["code"] == "reservation_exceeds_pool"
    both = {"pool_id": site.pool_id, "limits": {ONE: None}}
    got = await broker.call("PATCH", f"{servers}/{other['server_id']}", site.admin, both, 200)
    assert got["pool_id"] == site.pool_id and got["limits"] == {}


async def test_limit_changes_are_audited_and_validated(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    await set_limits(site, site.server_id, {ONE: {"max": 4, "reserved": 1}})
    await set_limits(site, site.server_id, {ONE: {"max": 4, "reserved": 1}})  # no change, no event
    await set_limits(site, site.server_id, {ONE: {"max": 2}})
    events = await site.events("server.limits_set")
    assert [(e["details"]["before"], e["details"]["after"]) for e in events] == [
        ({}, {ONE: {"max": 4, "reserved": 1}}),
        ({ONE: {"max": 4, "reserved": 1}}, {ONE: {"max": 2, "reserved": 0}}),
    ]
    assert events[0]["subject_id"] == site.server_id
    bad = await set_limits(site, site.server_id, {ONE: {"max": 1, "reserved": 2}}, status=400)
    assert bad["errors"][0]["field"] == f"limits.{ONE}.reserved"
    bad = await set_limits(site, site.server_id, {"Bad Type": {"max": 1}}, status=400)
    assert bad["errors"][0]["field"] == "limits.Bad Type"
    await set_limits(site, site.server_id, {ONE: {"max": -1}}, status=400)
    await set_limits(site, site.server_id, {ONE: {"cap": 1}}, status=400)
    servers = f"/v1/estates/{site.estate_id}/servers"
    await broker.call("PATCH", f"{servers}/{site.server_id}", site.admin, {}, 400)
    stranger = await make_site(broker, estate_name="Other")
    await broker.call("PATCH", f"{servers}/{site.server_id}", stranger.admin, {"limits": {ONE: {"max": 1}}}, 404)
