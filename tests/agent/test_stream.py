"""The agent holds the broker's event stream: an admin's force-release reaches the encoder
at once (an hour-long lease, no renewal due), through either replica; with the stream
lost, renewals still find it, and on reconnection the agent catches up on what it missed.

Real broker(s), real agent, through ``Proxy`` where the network must fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import Config
from agent.stream import SseParser, Watcher
from broker.cli import rotate_keys
from broker.config import load as load_broker_config
from broker.ids import new_token
from broker.push import events
from broker.services import SERVICES
from tests.agent.harness import (
    AgentFactory,
    AgentHarness,
    BrokerServer,
    FakeClock,
    LiveBroker,
    enroll_agent,
    eventually,
    serve_broker,
)
from tests.agent.proxy import Proxy
from tests.postgres import TEST_SECRET_KEY

HOUR = 3600


def watcher(agent: AgentHarness) -> Watcher:
    watchers = list(agent.daemon.host.streams.watchers.values())
    assert len(watchers) == 1, watchers
    return watchers[0]


async def streaming(agent: AgentHarness) -> Watcher:
    """The agent's one stream, once it is open and has said where it starts."""
    w = watcher(agent)
    await eventually(lambda: w.connected and w.parser.last_id is not None, what="the event stream to open")
    return w


async def long_poll(agent: AgentHarness, encoder: str, version: int) -> dict[str, Any]:
    status, body = await agent.call("GET", f"/v1/encoders/{encoder}/lease?wait=300&version={version}")
    assert status == 200, body
    return dict(body)


async def revoked_within_two_seconds(agent: AgentHarness, admin: LiveBroker, lease_id: str, encoder: str) -> None:
    """The admin force-releases; the encoder's long-poll wakes with ``revoked`` within 2 s."""
    before = await agent.lease(encoder)
    assert before["state"] == "active" and before["lease"]["token"]
    poll = asyncio.ensure_future(long_poll(agent, encoder, before["version"]))
    await asyncio.sleep(0.05)
    assert not poll.done()
    began = time.monotonic()
    await admin.call("DELETE", f"/v1/estates/{admin.estate_id}/leases/{lease_id}", admin.admin, status=204)
    after = await asyncio.wait_for(poll, 2.0)
    took = time.monotonic() - began
    assert took < 2.0, took
    assert after["state"] == "revoked"
    assert after["lease"] is None  # the token is no longer handed out
    assert after["error"]["code"] == "lease_revoked"
    assert (await agent.lease(encoder))["lease"] is None


async def test_an_admins_force_release_reaches_the_encoder_within_two_seconds(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory
) -> None:
    await live_broker.call(
        "PATCH", live_broker.pool_path(live_broker.default_pool), live_broker.admin, {"lease_seconds": HOUR}, 200
    )
    await enroll_agent(agent_config, live_broker.url, await live_broker.code())
    agent = await start_agent()
    await agent.want("ENC-1", 2)
    await agent.want("ENC-2", 1)
    await agent.wait_state("ENC-1", "active")
    await agent.wait_state("ENC-2", "active")
    await streaming(agent)
    status, body = await agent.call("GET", "/v1/status")
    assert status == 200 and [b["events"] for b in body["bindings"]] == ["live"]
    lease = (await agent.lease("ENC-1"))["lease"]
    await revoked_within_two_seconds(agent, live_broker, lease["id"], "ENC-1")
    # The other encoder's lease is untouched; no renewal was due (an hour's lease).
    assert (await agent.lease("ENC-2"))["state"] == "active"
    assert await live_broker.in_use() == 1
    # The agent does not take the seats again behind the admin's back.
    await asyncio.sleep(0.2)
    assert (await agent.lease("ENC-1"))["state"] == "revoked"
    assert await live_broker.in_use() == 1


@contextlib.asynccontextmanager
async def two_replicas(tmp_path: Path, clock: FakeClock, database: str) -> AsyncIterator[tuple[LiveBroker, LiveBroker]]:
    """Two brokers on one PostgreSQL database, each its own process state (app, store,
    hub, listener), as replicas are. Their slow poll is out of the way: only NOTIFY can
    carry an event from one to the other within seconds."""
    operator = new_token("op")
    servers = []
    for name in ("a", "b"):
        config = load_broker_config(
            None,
            env={},
            data_dir=tmp_path / name,
            operator_token=operator,
            clock=clock,
            database=database,
            secret_key=TEST_SECRET_KEY,
            database_pool_size=4,
            stream_poll_seconds=300,
        )
        server = BrokerServer(config)
        await server.start()
        servers.append(server)
    try:
        async with aiohttp.ClientSession() as session:
            a, b = (
                LiveBroker(f"http://127.0.0.1:{s.port}", operator, clock, session, data_dir=tmp_path, server=s)
                for s in servers
            )
            await a.setup_estate(lease_seconds=HOUR)
            b.estate_id, b.admin, b.default_pool = a.estate_id, a.admin, a.default_pool
            yield a, b
    finally:
        for server in servers:
            await server.stop()


@pytest.mark.parametrize("admin_on", ["other replica", "same replica"])
async def test_a_force_release_reaches_the_encoder_through_either_replica(
    tmp_path: Path,
    fake_clock: FakeClock,
    pg_database: str,
    agent_config: Config,
    start_agent: AgentFactory,
    admin_on: str,
) -> None:
    async with two_replicas(tmp_path, fake_clock, pg_database) as (a, b):
        await enroll_agent(agent_config, a.url, await a.code())  # the agent's broker is replica a
        agent = await start_agent()
        await agent.want("ENC-1", 1)
        await agent.wait_state("ENC-1", "active")
        await streaming(agent)
        lease = (await agent.lease("ENC-1"))["lease"]
        await revoked_within_two_seconds(agent, b if admin_on == "other replica" else a, lease["id"], "ENC-1")


async def test_with_the_stream_lost_renewal_still_finds_a_revocation(
    live_broker: LiveBroker, proxy: Proxy, agent_config: Config, start_agent: AgentFactory, fake_clock: FakeClock
) -> None:
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    agent = await start_agent()
    await agent.want("ENC-1", 1)
    await agent.wait_state("ENC-1", "active")
    w = await streaming(agent)
    proxy.streams_refused = True  # a proxy on the way that drops event streams
    proxy.cut_streams()
    await eventually(lambda: not w.connected, what="the stream to be lost")
    assert agent.daemon.host.streams.state(w.binding.server_id) == "connecting"
    lease = (await agent.lease("ENC-1"))["lease"]
    await live_broker.call(
        "DELETE", f"/v1/estates/{live_broker.estate_id}/leases/{lease['id']}", live_broker.admin, status=204
    )
    revoked_at = fake_clock.now()
    await asyncio.sleep(0.3)
    assert (await agent.lease("ENC-1"))["state"] == "active"  # nobody told it yet
    # The renewal (at a third of the 300 s lease) is refused: the encoder hears then.
    for _ in range(30):
        await agent.idle()
        await fake_clock.advance(5)
        if agent.keeper("ENC-1").state() == "revoked":
            break
    assert (await agent.lease("ENC-1"))["state"] == "revoked"
    assert (await agent.lease("ENC-1"))["error"]["code"] == "lease_revoked"
    assert fake_clock.now() - revoked_at < 300  # found by the renewal, before the lease ran out


async def test_on_reconnection_the_agent_catches_up_on_what_it_missed(
    live_broker: LiveBroker, proxy: Proxy, agent_config: Config, start_agent: AgentFactory, fake_clock: FakeClock
) -> None:
    await live_broker.call(
        "PATCH", live_broker.pool_path(live_broker.default_pool), live_broker.admin, {"lease_seconds": HOUR}, 200
    )
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    agent = await start_agent()
    for encoder in ("ENC-1", "ENC-2"):
        await agent.want(encoder, 1)
        await agent.wait_state(encoder, "active")
    w = await streaming(agent)
    seen = w.parser.last_id
    renewals = lambda: sum(r.endswith("/renew") for r in proxy.requests)  # noqa: E731
    assert renewals() == 0

    proxy.streams_refused = True
    proxy.cut_streams()
    await eventually(lambda: not w.connected, what="the stream to be lost")
    gone = (await agent.lease("ENC-1"))["lease"]["id"]
    await live_broker.call(
        "DELETE", f"/v1/estates/{live_broker.estate_id}/leases/{gone}", live_broker.admin, status=204
    )
    await live_broker.call(
        "PATCH", live_broker.pool_path(live_broker.default_pool), live_broker.admin, {"lease_seconds": 2 * HOUR}, 200
    )
    assert (await agent.lease("ENC-1"))["state"] == "active"

    proxy.streams_refused = False
    for _ in range(40):  # the watcher's jittered pauses, at most the retry cap (10 s) each
        if w.connected:
            break
        await agent.idle()
        await fake_clock.advance(2)
        await asyncio.sleep(0.01)
    await eventually(lambda: w.connected, what="the stream to open again")
    assert proxy.streams[0] is None  # the first connection starts afresh
    assert proxy.streams[-1] == seen  # the last resumes from the last id it saw
    # What was missed arrives: the revocation, and the new lifetime (renewed at once, a
    # good 20 minutes before its renewal was due).
    await agent.wait_state("ENC-1", "revoked")
    assert (await agent.lease("ENC-1"))["error"]["code"] == "lease_revoked"
    await eventually(lambda: renewals() >= 1, what="ENC-2's lease to be renewed")
    await eventually(
        lambda: (h := agent.keeper("ENC-2").record.held) is not None and h.expires_at - h.server_time == 2 * HOUR,
        what="ENC-2's lease to carry the new lifetime",
    )


async def test_a_removed_server_revokes_every_lease_at_once(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory
) -> None:
    await enroll_agent(agent_config, live_broker.url, await live_broker.code())
    agent = await start_agent()
    for encoder in ("ENC-1", "ENC-2"):
        await agent.want(encoder, 1)
        await agent.wait_state(encoder, "active")
    w = await streaming(agent)
    server_id = w.binding.server_id
    began = time.monotonic()
    await live_broker.call(
        "DELETE", f"/v1/estates/{live_broker.estate_id}/servers/{server_id}", live_broker.admin, status=204
    )
    for encoder in ("ENC-1", "ENC-2"):
        await agent.wait_state(encoder, "revoked", within=2.0)
        view = await agent.lease(encoder)
        assert view["lease"] is None and view["error"]["code"] == "server_removed"
    assert time.monotonic() - began < 2.0
    await eventually(lambda: w.task is not None and w.task.done(), what="the watcher to stop")
    assert agent.daemon.host.streams.state(server_id) == "off"


def test_the_parser_follows_the_sse_rules() -> None:
    parser = SseParser()
    lines = [
        "retry: 2000",
        "",
        ": keep-alive",
        "id: 7",
        "",
        "id: 8",
        "event: lease.revoked",
        'data: {"type":"lease.revoked","id":"8",',
        'data: "data":{"lease_id":"lease_x"}}',
        "",
    ]
    out = [e for line in lines if (e := parser.feed(line)) is not None]
    assert parser.retry_ms == 2000
    assert [(e.id, e.type, e.data) for e in out] == [("8", "lease.revoked", {"lease_id": "lease_x"})]
    assert parser.last_id == "8"
    # A heartbeat with an id moves the resume point without an event.
    assert parser.feed(": keep-alive") is None and parser.feed("id: 12") is None and parser.feed("") is None
    assert parser.last_id == "12"
    # Garbage is ignored, not fatal.
    assert parser.feed("data: {not json") is None and parser.feed("") is None


@contextlib.asynccontextmanager
async def broker_and_proxy(
    tmp_path: Path, clock: FakeClock, **settings: Any
) -> AsyncIterator[tuple[LiveBroker, Proxy]]:
    async with serve_broker(tmp_path / "broker", clock, **settings) as broker:
        proxy = Proxy(broker.url)
        await proxy.start()
        try:
            yield broker, proxy
        finally:
            await proxy.close()


async def test_a_stream_gone_silent_is_taken_for_dead_and_resumed(
    tmp_path: Path, fake_clock: FakeClock, agent_config: Config, start_agent: AgentFactory
) -> None:
    # Heartbeats every 0.2 s (the broker says so in X-Heartbeat-Seconds): silent for 0.6 s is dead.
    async with broker_and_proxy(tmp_path, fake_clock, stream_heartbeat_seconds=0.2) as (broker, proxy):
        await broker.call("PATCH", broker.pool_path(broker.default_pool), broker.admin, {"lease_seconds": HOUR}, 200)
        await enroll_agent(agent_config, proxy.url, await broker.code())
        agent = await start_agent()
        await agent.want("ENC-1", 1)
        await agent.wait_state("ENC-1", "active")
        w = await streaming(agent)
        seen = w.parser.last_id
        proxy.streams_muted = True  # the connection stays up; nothing more comes through
        await eventually(lambda: not w.connected, within=5.0, what="the silent stream to be given up")
        proxy.streams_muted = False
        for _ in range(40):
            if w.connected:
                break
            await agent.idle()
            await fake_clock.advance(2)
            await asyncio.sleep(0.01)
        await eventually(lambda: w.connected, what="the stream to open again")
        assert proxy.streams == [None, seen]
        lease = (await agent.lease("ENC-1"))["lease"]
        await revoked_within_two_seconds(agent, broker, lease["id"], "ENC-1")


async def test_a_lifetime_change_is_renewed_at_once_and_rotated_keys_fetched_at_once(
    tmp_path: Path, fake_clock: FakeClock, agent_config: Config, start_agent: AgentFactory
) -> None:
    # keys rotate runs as another process: this SQLite broker finds it by its poll.
    async with broker_and_proxy(tmp_path, fake_clock, stream_poll_seconds=0.1) as (broker, proxy):
        await broker.call("PATCH", broker.pool_path(broker.default_pool), broker.admin, {"lease_seconds": HOUR}, 200)
        await enroll_agent(agent_config, proxy.url, await broker.code())
        agent = await start_agent()
        await agent.want("ENC-1", 1)
        await agent.wait_state("ENC-1", "active")
        await streaming(agent)
        assert not any(r.endswith("/renew") for r in proxy.requests)
        await broker.call(
            "PATCH", broker.pool_path(broker.default_pool), broker.admin, {"lease_seconds": 2 * HOUR}, 200
        )
        await eventually(
            lambda: (h := agent.keeper("ENC-1").record.held) is not None and h.expires_at - h.server_time == 2 * HOUR,
            within=3.0,
            what="the lease renewed with the new lifetime",
        )
        assert sum(r.endswith("/renew") for r in proxy.requests) == 1  # no renewal was due for 20 minutes

        fetched = proxy.requests.count("GET /v1/keys")
        assert broker.server is not None
        key = await rotate_keys(broker.server.config)
        await eventually(lambda: proxy.requests.count("GET /v1/keys") > fetched, within=3.0, what="the keys fetched")
        ring = agent.daemon.host.keyring(proxy.url)
        await eventually(lambda: key.kid in ring.kids, within=3.0, what="the new key known")


async def test_back_after_longer_than_the_retention_the_agent_renews_everything(
    live_broker: LiveBroker, proxy: Proxy, agent_config: Config, start_agent: AgentFactory, fake_clock: FakeClock
) -> None:
    hour = {"lease_seconds": HOUR}
    await live_broker.call("PATCH", live_broker.pool_path(live_broker.default_pool), live_broker.admin, hour, 200)
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    agent = await start_agent()
    for encoder in ("ENC-1", "ENC-2"):
        await agent.want(encoder, 1)
        await agent.wait_state(encoder, "active")
    w = await streaming(agent)
    proxy.streams_refused = True
    proxy.cut_streams()
    await eventually(lambda: not w.connected, what="the stream to be lost")
    gone = (await agent.lease("ENC-1"))["lease"]["id"]
    path = f"/v1/estates/{live_broker.estate_id}/leases/{gone}"
    await live_broker.call("DELETE", path, live_broker.admin, status=204)
    # Meanwhile the broker forgets the events (as after stream_retention_seconds).
    assert live_broker.server is not None and live_broker.server.app is not None
    store = live_broker.server.app[SERVICES].store
    pruned = await store.write(partial(events.prune, now=fake_clock.now(), keep_seconds=0, keep_rows=0))
    assert pruned > int(w.parser.last_id or 0)

    proxy.streams_refused = False
    for _ in range(40):
        if w.connected:
            break
        await agent.idle()
        await fake_clock.advance(2)
        await asyncio.sleep(0.01)
    await eventually(lambda: w.connected, what="the stream to open again")
    assert w.parser.last_id == str(pruned)  # resync: carry on from the broker's head
    # What was missed cannot be told: every lease is renewed, and the renewal tells.
    await agent.wait_state("ENC-1", "revoked")
    await eventually(lambda: sum(r.endswith("/renew") for r in proxy.requests) >= 2, what="both leases renewed")
    assert (await agent.lease("ENC-2"))["state"] == "active"


async def test_a_grant_revoked_while_its_answer_is_on_the_way_is_not_handed_out(
    live_broker: LiveBroker, proxy: Proxy, agent_config: Config, start_agent: AgentFactory
) -> None:
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    agent = await start_agent()
    await streaming(agent)
    proxy.hold("/v1/leases", answer=True)  # the broker grants; its answer is held up
    await agent.want("ENC-1", 1)
    await eventually(lambda: proxy.holding == 1, what="the grant to be held up")
    (granted,) = await live_broker.leases()
    await live_broker.call(
        "DELETE", f"/v1/estates/{live_broker.estate_id}/leases/{granted['id']}", live_broker.admin, status=204
    )
    await asyncio.sleep(0.2)  # the stream's lease.revoked arrives before the grant
    proxy.let_go()
    await agent.wait_state("ENC-1", "revoked")
    view = await agent.lease("ENC-1")
    assert view["lease"] is None and view["error"]["code"] == "lease_revoked"
    await asyncio.sleep(0.2)
    assert proxy.requests.count("POST /v1/leases") == 1  # not taken again behind the admin's back
    assert await live_broker.in_use() == 0


async def test_a_broker_without_the_stream_is_asked_seldom_and_renewals_carry_on(
    live_broker: LiveBroker,
    proxy: Proxy,
    agent_config: Config,
    start_agent: AgentFactory,
    fake_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An older broker: 404 for /v1/stream, as a problem document.
    problem = b'{"type":"about:blank","title":"Not found","status":404,"code":"not_found","detail":"No such route."}'
    proxy.fault("/v1/stream", "replace", times=None, status=404, body=problem, content_type="application/problem+json")
    caplog.set_level(logging.DEBUG, logger="agent.stream")
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    agent = await start_agent()
    await agent.want("ENC-1", 1)
    await agent.wait_state("ENC-1", "active")
    first = (await agent.lease("ENC-1"))["lease"]
    for _ in range(30):  # 300 s: the lease (300 s) is renewed at least twice meanwhile
        await agent.idle()
        await fake_clock.advance(10)
    await agent.idle()
    assert (await agent.lease("ENC-1"))["state"] == "active"
    assert (await agent.lease("ENC-1"))["lease"]["expires_at"] > first["expires_at"]
    # Asked at the retry cap (10 s in these tests, full jitter: 5 s on average, so about
    # 60 times in 300 s; a loop without a pause would ask without end); said once.
    assert 2 <= len(proxy.streams) <= 100, len(proxy.streams)
    warned = [r for r in caplog.records if r.name == "agent.stream" and r.levelno >= logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "not_found" in warned[0].getMessage() or "404" in warned[0].getMessage()


async def test_many_bindings_streaming_leave_the_calls_their_connections(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory
) -> None:
    """A host with more tenant domains than the client keeps connections for (8): each
    stream holds a connection for good, and none may starve an acquire."""
    domains = [f"tenant-{n}" for n in range(10)]
    for domain in domains:
        await enroll_agent(agent_config, live_broker.url, await live_broker.code(), domain=domain)
    agent = await start_agent()
    streams = agent.daemon.host.streams
    await eventually(
        lambda: len(streams.watchers) == 10 and all(w.connected for w in streams.watchers.values()),
        what="ten streams open",
    )
    began = time.monotonic()
    await agent.want("ENC-1", 1, domain="tenant-9")
    await agent.wait_state("ENC-1", "active", within=4.0)  # the request timeout is 5 s
    assert time.monotonic() - began < 4.0
