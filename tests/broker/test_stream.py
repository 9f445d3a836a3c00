"""``GET /v1/stream``: what an admin does reaches the server's agent at once, for that
server only, in order, resumable, and across replicas on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.cli import rotate_keys
from broker.clock import ManualClock
from broker.push import events
from broker.services import SERVICES
from tests.broker.estate_kit import assert_problem, raw
from tests.broker.leasing import ONE, Site, make_site
from tests.broker.sse import SseReader
from tests.conftest import Broker

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@contextlib.asynccontextmanager
async def stream(broker: Broker, token: str, last_id: str | None = None) -> AsyncIterator[SseReader]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    resp = await broker.client.get("/v1/stream", headers=headers)
    assert resp.status == 200, await resp.text()
    try:
        yield SseReader(resp)
    finally:
        resp.close()


async def opened(reader: SseReader) -> str:
    """Past the retry hint and the opening ``ready``: the id the stream starts at."""
    first = await reader.frame()
    assert first is not None and first.retry is not None and first.retry > 0
    ready = await reader.event()
    assert ready.event == "ready", ready
    assert ready.id is not None
    assert set(ready.payload) == {"type", "id", "timestamp", "data"} and ready.payload["id"] == ready.id
    return ready.id


async def revoke(site: Site, lease_id: str) -> None:
    await site.broker.call("DELETE", f"/v1/estates/{site.estate_id}/leases/{lease_id}", site.admin, status=204)


async def test_a_force_release_reaches_the_servers_stream_with_its_lease_id(broker: Broker) -> None:
    site = await make_site(broker)
    lease = await site.acquire("ENC-1", 2, status=201)
    async with stream(broker, site.server) as reader:
        resp = reader.response
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-store"
        assert "X-Request-Id" in resp.headers
        start = int(await opened(reader))
        began = time.monotonic()
        await revoke(site, lease["id"])
        got = await reader.event(within=2.0)
        assert time.monotonic() - began < 2.0
    assert got.event == "lease.revoked"
    assert got.id is not None and int(got.id) > start
    body = got.payload
    assert body["type"] == "lease.revoked" and body["id"] == got.id
    assert body["timestamp"] == "2027-01-01T00:00:00Z"
    assert body["data"] == {"lease_id": lease["id"], "encoder": "ENC-1", "reason": "revoked_by_admin"}


async def test_another_servers_events_never_reach_this_stream(broker: Broker) -> None:
    site = await make_site(broker)
    neighbour = await site.enrol("host-2", pool_id=site.pool_id)
    other_site = await make_site(broker, estate_name="Other Estate")
    theirs = await site.acquire("ENC-N", 1, status=201, token=neighbour["server_token"])
    foreign = await other_site.acquire("ENC-F", 1, status=201)
    mine = await site.acquire("ENC-M", 1, status=201)
    async with stream(broker, site.server) as reader:
        await opened(reader)
        await revoke(site, theirs["id"])  # same pool, another server
        await revoke(other_site, foreign["id"])  # another estate
        await broker.call(
            "DELETE", f"/v1/estates/{site.estate_id}/servers/{neighbour['server_id']}", site.admin, status=204
        )
        await revoke(site, mine["id"])
        got = await reader.event()
    # Ids only grow: had any of the others come, it would have come first.
    assert got.event == "lease.revoked" and got.payload["data"]["lease_id"] == mine["id"]


async def test_resume_with_last_event_id_sends_exactly_the_missed_events(broker: Broker) -> None:
    site = await make_site(broker)
    neighbour = await site.enrol("host-2", pool_id=site.pool_id)
    a = await site.acquire("ENC-A", 1, status=201)
    b = await site.acquire("ENC-B", 1, status=201)
    n = await site.acquire("ENC-N", 1, status=201, token=neighbour["server_token"])
    async with stream(broker, site.server) as reader:
        start = await opened(reader)
    await revoke(site, a["id"])
    await revoke(site, n["id"])
    await site.set_lease_seconds(900)
    await revoke(site, b["id"])

    async with stream(broker, site.server, last_id=start) as reader:
        first = await reader.frame()
        assert first is not None and first.retry is not None
        missed = [await reader.event() for _ in range(3)]
        assert [m.event for m in missed] == ["lease.revoked", "pool.changed", "lease.revoked"]
        assert missed[0].payload["data"]["lease_id"] == a["id"]
        assert missed[1].payload["data"] == {"pool_id": site.pool_id, "lease_seconds": 900, "reason": "lease_seconds"}
        assert missed[2].payload["data"]["lease_id"] == b["id"]
        ids = [int(m.id or 0) for m in missed]
        assert ids == sorted(ids) and ids[0] > int(start)

    # From the middle: only what came after.
    async with stream(broker, site.server, last_id=str(ids[0])) as reader:
        assert [(await reader.event()).id for _ in range(2)] == [str(i) for i in ids[1:]]
    # Up to date: nothing but heartbeats until something happens.
    async with stream(broker, site.server, last_id=str(ids[2])) as reader:
        c = await site.acquire("ENC-C", 1, status=201)
        await revoke(site, c["id"])
        got = await reader.event()
        assert got.payload["data"]["lease_id"] == c["id"]


async def test_a_resume_from_before_the_retention_or_from_nowhere_is_told_to_resync(broker: Broker) -> None:
    site = await make_site(broker)
    a = await site.acquire("ENC-A", 1, status=201)
    async with stream(broker, site.server) as reader:
        start = await opened(reader)
    await revoke(site, a["id"])
    svc = broker.client.app[SERVICES]
    broker.clock.advance(svc.config.stream_retention_seconds + 1)
    pruned = await svc.store.write(
        lambda tx: events.prune(tx, broker.clock.now(), svc.config.stream_retention_seconds, 1000)
    )
    assert pruned > int(start)
    for last_id in (start, "999999999"):
        async with stream(broker, site.server, last_id=last_id) as reader:
            got = await reader.event()
            assert got.event == "resync", got
            assert got.id == str(pruned)
    # From the horizon itself nothing was lost: no resync, only what follows.
    async with stream(broker, site.server, last_id=str(pruned)) as reader:
        b = await site.acquire("ENC-B", 1, status=201)
        await revoke(site, b["id"])
        got = await reader.event()
        assert got.event == "lease.revoked" and got.payload["data"]["lease_id"] == b["id"]


async def test_heartbeats_keep_an_idle_stream_and_move_its_resume_point(
    aiohttp_client: MakeClient, config_factory: Callable[..., Any], clock: ManualClock, operator_token: str
) -> None:
    broker = Broker(
        await aiohttp_client(create_app(config_factory(stream_heartbeat_seconds=0.1))), operator_token, clock
    )
    site = await make_site(broker)
    neighbour = await site.enrol("host-2", pool_id=site.pool_id)
    theirs = await site.acquire("ENC-N", 1, status=201, token=neighbour["server_token"])
    async with stream(broker, site.server) as reader:
        start = await opened(reader)
        beat = await reader.frame(within=2.0)
        assert beat is not None and beat.comments == ["keep-alive"] and beat.event is None and beat.id is None
        await revoke(site, theirs["id"])  # not this server's: only its position moves
        for _ in range(20):
            beat = await reader.frame(within=2.0)
            assert beat is not None and beat.event is None
            if beat.id is not None:
                break
        assert beat.id is not None and int(beat.id) > int(start)


async def test_a_pool_change_and_a_key_rotation_reach_the_stream(
    aiohttp_client: MakeClient, config_factory: Callable[..., Any], clock: ManualClock, operator_token: str
) -> None:
    config = config_factory(stream_poll_seconds=0.2)
    broker = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    site = await make_site(broker)
    async with stream(broker, site.server) as reader:
        await opened(reader)
        await site.set_lease_seconds(1200)
        changed = await reader.event()
        assert changed.event == "pool.changed"
        assert changed.payload["data"] == {"pool_id": site.pool_id, "lease_seconds": 1200, "reason": "lease_seconds"}
        # keys rotate runs as another process would (its own store): the poll finds it.
        key = await rotate_keys(config)
        rotated = await reader.event(within=3.0)
        assert rotated.event == "keys.rotated" and rotated.payload["data"] == {"kid": key.kid}
    # The replica that served the event publishes the new key already.
    jwks = await broker.call("GET", "/v1/keys", status=200)
    assert key.kid in [k["kid"] for k in jwks["keys"]]


async def test_a_removed_server_hears_so_last_and_its_stream_ends(broker: Broker) -> None:
    site = await make_site(broker)
    lease = await site.acquire("ENC-1", 1, status=201)
    async with stream(broker, site.server) as reader:
        await opened(reader)
        await broker.call("DELETE", f"/v1/estates/{site.estate_id}/servers/{site.server_id}", site.admin, status=204)
        got = await reader.event()
        assert got.event == "server.removed"
        assert got.payload["data"] == {"server_id": site.server_id, "lease_ids": [lease["id"]]}
        assert await reader.frame() is None
    r = await raw(broker, "GET", "/v1/stream", site.server)
    assert_problem(r, 401, "unauthenticated")


async def test_streams_per_server_are_bounded_the_oldest_ends(
    aiohttp_client: MakeClient, config_factory: Callable[..., Any], clock: ManualClock, operator_token: str
) -> None:
    broker = Broker(await aiohttp_client(create_app(config_factory(stream_max_per_server=2))), operator_token, clock)
    site = await make_site(broker)
    neighbour = await site.enrol("host-2", pool_id=site.pool_id)
    async with stream(broker, site.server) as first, stream(broker, site.server) as second:
        await opened(first)
        await opened(second)
        assert await streams_open(broker) == 2
        async with stream(broker, neighbour["server_token"]) as theirs:
            await opened(theirs)  # another server's streams count for it alone
            async with stream(broker, site.server) as third:
                await opened(third)
                assert await first.frame() is None
                lease = await site.acquire("ENC-1", 1, status=201)
                await revoke(site, lease["id"])
                assert (await second.event()).event == "lease.revoked"
                assert (await third.event()).event == "lease.revoked"
                assert await streams_open(broker) == 3  # two of this server, one of the other


async def streams_open(broker: Broker) -> int:
    r = await raw(broker, "GET", "/metrics", broker.operator)
    found = [line for line in r.text.splitlines() if line.startswith("tenure_streams_open ")]
    assert len(found) == 1, r.text
    return int(float(found[0].split()[1]))


async def test_only_a_server_token_opens_a_stream_and_a_bad_last_event_id_is_refused(broker: Broker) -> None:
    site = await make_site(broker)
    assert_problem(await raw(broker, "GET", "/v1/stream"), 401, "unauthenticated")
    assert_problem(await raw(broker, "GET", "/v1/stream", site.admin), 403, "forbidden")
    for bad in ("abc", "-1", "１２", "1" * 19):
        r = await raw(broker, "GET", "/v1/stream", site.server, headers={"Last-Event-ID": bad})
        assert_problem(r, 400, "validation_error")


async def test_shutdown_ends_open_streams_at_once(
    aiohttp_client: MakeClient, config_factory: Callable[..., Any], clock: ManualClock, operator_token: str
) -> None:
    client = await aiohttp_client(create_app(config_factory()))
    broker = Broker(client, operator_token, clock)
    site = await make_site(broker)
    async with stream(broker, site.server) as reader:
        await opened(reader)
        began = time.monotonic()
        await client.server.close()  # runner clean-up: on_shutdown, then waits for handlers
        assert await reader.frame(within=5.0) is None
        assert time.monotonic() - began < 3.0


async def test_an_admin_on_one_replica_reaches_an_agent_streaming_from_another(
    aiohttp_client: MakeClient,
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    store_kind: str,
) -> None:
    if store_kind != "postgres":
        pytest.skip("replicas share a PostgreSQL database; one SQLite file is one broker process")
    # The slow poll is out of the way: only LISTEN/NOTIFY can be this quick.
    config = config_factory(stream_poll_seconds=300)
    a = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    b = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    site = await make_site(a)
    lease = await site.acquire("ENC-1", 1, status=201)
    async with stream(a, site.server) as reader:
        await opened(reader)
        await asyncio.sleep(0.2)  # a's listener is connected (it starts with the app)
        began = time.monotonic()
        await b.call("DELETE", f"/v1/estates/{site.estate_id}/leases/{lease['id']}", site.admin, status=204)
        got = await reader.event(within=2.0)
        assert time.monotonic() - began < 2.0
        assert got.event == "lease.revoked" and got.payload["data"]["lease_id"] == lease["id"]


async def test_an_event_is_recorded_only_with_its_action(broker: Broker) -> None:
    """Refused actions record nothing: the event lives in the action's transaction."""
    site = await make_site(broker)
    svc = broker.client.app[SERVICES]
    before = await svc.store.read(events.head)
    await broker.call("DELETE", f"/v1/estates/{site.estate_id}/leases/lease_nosuchthing", site.admin, status=404)
    lease = await site.acquire("ENC-1", 1, status=201)
    await revoke(site, lease["id"])
    await revoke(site, lease["id"])  # idempotent: already revoked, nothing new to say
    await site.set_lease_seconds((await site.pool())["lease_seconds"])  # unchanged: nothing to say
    found, _ = await svc.store.read(lambda tx: events.since(tx, before))
    assert [e.type for e in found] == ["lease.revoked"]


async def test_a_purchase_put_on_hold_reaches_the_pools_leasing_it(broker: Broker) -> None:
    stock = [("SO-1", 4, 200, ONE), ("SO-2", 4, 365, ONE)]
    site = await make_site(broker, stock, move={"SO-1": 2, "SO-2": 2})
    home = await site.enrol("host-home", pool_id=site.default_pool_id)  # Default holds SO-1 too, unleased
    await site.acquire("ENC-1", 2, status=201)  # Paris: two seats, of SO-1 (the earliest expiry first)
    async with stream(broker, site.server) as paris, stream(broker, home["server_token"]) as default:
        await opened(paris)
        await opened(default)
        await site.set_purchase("SO-1", status="on_hold")
        got = await paris.event()
        assert got.event == "pool.changed"
        assert got.payload["data"] == {"pool_id": site.pool_id, "lease_seconds": 3600, "reason": "purchase"}
        # The Default Pool holds SO-1 but leases none of it: its server heard nothing; the
        # first it hears is its own pool's change, made after.
        await site.set_lease_seconds(1500, pool_id=site.default_pool_id)
        first = await default.event()
        assert first.payload["data"] == {
            "pool_id": site.default_pool_id,
            "lease_seconds": 1500,
            "reason": "lease_seconds",
        }


async def test_a_rebound_server_hears_so_and_then_hears_its_new_pool(broker: Broker) -> None:
    site = await make_site(broker)
    async with stream(broker, site.server) as reader:
        await opened(reader)
        path = f"/v1/estates/{site.estate_id}/servers/{site.server_id}"
        await broker.call("PATCH", path, site.admin, {"pool_id": site.default_pool_id}, 200)
        got = await reader.event()
        assert got.event == "pool.changed"
        assert got.payload["data"]["pool_id"] == site.default_pool_id
        assert got.payload["data"]["reason"] == "rebound"
        await site.set_lease_seconds(1200)  # Paris, which it left: not for it
        await site.set_lease_seconds(900, pool_id=site.default_pool_id)  # its new pool
        got = await reader.event()
        assert got.payload["data"] == {"pool_id": site.default_pool_id, "lease_seconds": 900, "reason": "lease_seconds"}
