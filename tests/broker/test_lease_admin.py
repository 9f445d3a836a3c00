"""The admin side of leases: listing, force-release, server removal and rebinding, audit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from tests.broker.leasing import ONE, make_site, ts
from tests.conftest import Broker


async def test_leases_are_listed_with_filters(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 10, 365, ONE)], move={"SO-1": 6})
    other = await site.enrol("host-2")
    home = await site.enrol("host-home", pool_id=site.default_pool_id)
    a = await site.acquire("ENC-A", 2, status=201)
    b = await site.acquire("ENC-B", 1, status=201, token=other["server_token"])
    c = await site.acquire("ENC-A", 3, status=201, token=home["server_token"])
    released = await site.acquire("ENC-GONE", 1, status=201)
    await site.release(released["id"])

    everything = await site.leases()
    assert sorted(x["id"] for x in everything) == sorted([a["id"], b["id"], c["id"]])
    row = next(x for x in everything if x["id"] == a["id"])
    assert row == {
        "id": a["id"],
        "pool_id": site.pool_id,
        "server_id": site.server_id,
        "server_name": "host-1",
        "encoder": "ENC-A",
        "licence_type": ONE,
        "count": 2,
        "created_at": "2027-01-01T00:00:00Z",
        "renewed_at": "2027-01-01T00:00:00Z",
        "expires_at": a["expires_at"],
        "encoder_kind": "hardware",
        "soft_lock_until": None,
    }
    assert {x["id"] for x in await site.leases(pool=site.pool_id)} == {a["id"], b["id"]}
    assert {x["id"] for x in await site.leases(pool=site.default_pool_id)} == {c["id"]}
    assert {x["id"] for x in await site.leases(server=other["server_id"])} == {b["id"]}
    assert {x["id"] for x in await site.leases(encoder="ENC-A")} == {a["id"], c["id"]}
    assert {x["id"] for x in await site.leases(encoder="ENC-A", pool=site.pool_id)} == {a["id"]}
    assert await site.leases(encoder="nobody") == []
    # Paging walks every lease exactly once.
    body = await broker.call("GET", f"/v1/estates/{site.estate_id}/leases?limit=2", site.admin, status=200)
    assert len(body["items"]) == 2 and body["next"]
    rest = await broker.call(
        "GET", f"/v1/estates/{site.estate_id}/leases?limit=2&after={body['next']}", site.admin, status=200
    )
    assert len(rest["items"]) == 1 and rest["next"] is None
    assert {x["id"] for x in body["items"] + rest["items"]} == {a["id"], b["id"], c["id"]}


async def test_force_release_frees_seats_and_the_agent_learns_at_renewal(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 3, 365, ONE)])
    lease = await site.acquire("ENC-1", 3, status=201)
    await broker.call("DELETE", f"/v1/estates/{site.estate_id}/leases/{lease['id']}", site.admin, status=204)
    view = await site.pool()
    assert view["in_use"] == 0 and view["available"] == 3
    assert view["revoked_unexpired"] == 3  # its token is still out there until exp
    assert await site.leases() == []
    await site.acquire("ENC-2", 3, status=201)
    gone = await site.renew(lease["id"], status=410)
    assert gone["code"] == "lease_gone" and gone["reason"] == "revoked"
    # The agent must not get it back by asking again under the old id; idempotent delete.
    await broker.call("DELETE", f"/v1/estates/{site.estate_id}/leases/{lease['id']}", site.admin, status=204)
    revoked = [e for e in await site.events("lease.revoked") if e["subject_id"] == lease["id"]]
    assert len(revoked) == 1 and revoked[0]["actor"]["kind"] == "admin"
    # Once the revoked token has expired, the overhang is gone from the view.
    broker.clock.set(ts(lease["expires_at"]))
    assert (await site.pool())["revoked_unexpired"] == 0
    missing = await broker.call("DELETE", f"/v1/estates/{site.estate_id}/leases/lse_nope", site.admin, status=404)
    assert missing["code"] == "not_found"


async def test_removing_a_server_frees_its_leases_and_kills_its_token(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    other = await site.enrol("host-2")
    a = await site.acquire("ENC-1", 2, status=201)
    b = await site.acquire("ENC-2", 2, status=201)
    kept = await site.acquire("ENC-3", 1, status=201, token=other["server_token"])
    assert (await broker.call("GET", "/v1/me", site.server, status=200))["kind"] == "server"
    await broker.call("DELETE", f"/v1/estates/{site.estate_id}/servers/{site.server_id}", site.admin, status=204)
    for call in (
        ("GET", "/v1/me", None),
        ("POST", f"/v1/leases/{a['id']}/renew", {}),
        ("POST", "/v1/leases", {"encoder": "ENC-9", "licence_type": ONE, "count": 1}),
        ("DELETE", f"/v1/leases/{b['id']}", None),
    ):
        body = await broker.call(call[0], call[1], site.server, call[2], 401)
        assert body["code"] == "unauthenticated"
    view = await site.pool()
    assert view["in_use"] == 1 and view["revoked_unexpired"] == 4
    assert [x["id"] for x in await site.leases()] == [kept["id"]]
    assert [s["id"] for s in await site.servers()] == [other["server_id"]]
    await site.acquire("ENC-4", 4, status=201, token=other["server_token"])
    removed = await site.events("server.removed")
    assert removed[-1]["subject_id"] == site.server_id
    assert removed[-1]["details"]["leases_freed"] == 2
    revoked = {e["subject_id"] for e in await site.events("lease.revoked")}
    assert revoked == {a["id"], b["id"]}
    await broker.call("DELETE", f"/v1/estates/{site.estate_id}/servers/{site.server_id}", site.admin, status=404)


async def test_rebind_is_refused_while_the_server_holds_leases(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 6, 365, ONE)], move={"SO-1": 3})
    lease = await site.acquire("ENC-1", 3, status=201)
    path = f"/v1/estates/{site.estate_id}/servers/{site.server_id}"
    body = await broker.call("PATCH", path, site.admin, {"pool_id": site.default_pool_id}, 409)
    assert body["code"] == "server_has_leases"
    assert (await site.servers())[0]["pool_id"] == site.pool_id
    await site.release(lease["id"])
    moved = await broker.call("PATCH", path, site.admin, {"pool_id": site.default_pool_id}, 200)
    assert moved["pool_id"] == site.default_pool_id
    # From now on its encoders draw from the Default Pool (the cached identity was dropped).
    assert (await broker.call("GET", "/v1/me", site.server, status=200))["pool_id"] == site.default_pool_id
    fresh = await site.acquire("ENC-1", 3, status=201)
    assert fresh["pool_id"] == site.default_pool_id
    assert (await site.pool(site.default_pool_id))["in_use"] == 3
    assert (await site.pool())["in_use"] == 0
    rebound = await site.events("server.rebound")
    assert rebound[-1]["details"]["after"] == {"pool_id": site.default_pool_id}


async def test_rebind_is_allowed_once_the_leases_have_lapsed(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 6, 365, ONE)], move={"SO-1": 3})
    await site.acquire("ENC-1", 3, status=201)
    broker.clock.advance(3600)
    await broker.call(
        "PATCH",
        f"/v1/estates/{site.estate_id}/servers/{site.server_id}",
        site.admin,
        {"pool_id": site.default_pool_id},
        200,
    )


async def test_servers_show_last_seen_and_seats_in_use(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    other = await site.enrol("host-2")
    lease = await site.acquire("ENC-1", 2, status=201)
    await site.acquire("ENC-2", 1, status=201)
    broker.clock.advance(600)
    await site.renew(lease["id"], status=200)
    servers = {s["id"]: s for s in await site.servers()}
    mine, theirs = servers[site.server_id], servers[other["server_id"]]
    assert mine["in_use"] == 3 and mine["leases"] == 2
    assert mine["last_seen_at"] == "2027-01-01T00:10:00Z"
    assert theirs["in_use"] == 0 and theirs["last_seen_at"] == "2027-01-01T00:00:00Z"
    broker.clock.advance(3600)  # ENC-2 was never renewed; ENC-1's lease ran out too
    servers = {s["id"]: s for s in await site.servers()}
    assert servers[site.server_id]["in_use"] == 0


async def test_every_lease_event_is_audited(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    granted = await site.acquire("ENC-1", 2, status=201)
    await site.acquire("ENC-1", 3, status=200)
    released = await site.acquire("ENC-2", 1, status=201)
    await site.release(released["id"])
    await site.renew(released["id"], status=410)
    revoked = await site.acquire("ENC-3", 1, status=201)
    await broker.call("DELETE", f"/v1/estates/{site.estate_id}/leases/{revoked['id']}", site.admin, status=204)
    broker.clock.advance(3600)
    await site.acquire("ENC-4", 1, status=201)  # lapses ENC-1 on the way
    events = await site.events()
    seen = [(e["action"], e["subject_id"]) for e in events if e["action"].startswith("lease.")]
    for expected in (
        ("lease.granted", granted["id"]),
        ("lease.changed", granted["id"]),
        ("lease.released", released["id"]),
        ("lease.renewal_refused", released["id"]),
        ("lease.revoked", revoked["id"]),
        ("lease.lapsed", granted["id"]),
    ):
        assert expected in seen, expected
    grant = next(e for e in events if e["action"] == "lease.granted" and e["subject_id"] == granted["id"])
    assert grant["actor"] == {"kind": "server", "id": site.server_id, "name": "host-1"}
    assert grant["pool_id"] == site.pool_id
    assert grant["details"]["encoder"] == "ENC-1" and grant["details"]["after"] == 2
    # Tokens never reach the audit log.
    assert granted["token"] not in str(events) and site.server not in str(events)


async def test_a_removed_or_rebound_server_cannot_acquire_through_another_replica(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    # Two brokers on one database, as replicas are: each caches token → server for a few
    # seconds, so the transaction itself must check the server as it is now.
    config = config_factory()
    one = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    two = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    site = await make_site(one, [("SO-1", 6, 365, ONE)], move={"SO-1": 3})
    other = await site.enrol("host-2")
    for token in (site.server, other["server_token"]):  # replica two caches both identities
        assert (await two.call("GET", "/v1/me", token, status=200))["pool_id"] == site.pool_id

    await one.call(
        "PATCH",
        f"/v1/estates/{site.estate_id}/servers/{other['server_id']}",
        site.admin,
        {"pool_id": site.default_pool_id},
        200,
    )
    lease = await two.call(
        "POST", "/v1/leases", other["server_token"], {"encoder": "ENC-1", "licence_type": ONE, "count": 1}, 201
    )
    assert lease["pool_id"] == site.default_pool_id  # not the pool it was bound to before
    assert (await site.pool())["in_use"] == 0

    await one.call("DELETE", f"/v1/estates/{site.estate_id}/servers/{site.server_id}", site.admin, status=204)
    body = await two.call("POST", "/v1/leases", site.server, {"encoder": "ENC-2", "licence_type": ONE, "count": 1}, 401)
    assert body["code"] == "unauthenticated"
    assert (await site.pool())["in_use"] == 0
