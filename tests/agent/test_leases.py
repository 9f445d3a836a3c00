"""The service end to end: a real broker, a real agent, the socket API, a shared clock."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from agent.config import Config
from agent.records import Want, load_leases, save_leases
from tests.agent.harness import (
    LT,
    T0,
    AgentFactory,
    AgentHarness,
    FakeClock,
    LiveBroker,
    enroll_agent,
    eventually,
)
from tests.agent.proxy import Proxy


async def test_acquire_through_the_socket(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory
) -> None:
    await enroll_agent(agent_config, live_broker.url, await live_broker.code())
    agent = await start_agent()
    status, view = await agent.call("PUT", "/v1/encoders/ENC-1/lease?wait=5", {"licence_type": LT, "count": 3})
    assert status == 200, view
    assert view["state"] == "active"
    assert view["lease"]["count"] == 3
    assert view["lease"]["token"].count(".") == 2
    assert await live_broker.in_use() == 3


async def test_the_encoder_kind_reaches_the_broker(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory
) -> None:
    await enroll_agent(agent_config, live_broker.url, await live_broker.code())
    agent = await start_agent()
    body = {"licence_type": LT, "count": 1, "encoder_kind": "container"}
    status, view = await agent.call("PUT", "/v1/encoders/CT-1/lease?wait=5", body)
    assert status == 200 and view["state"] == "active", view
    status, _ = await agent.call("PUT", "/v1/encoders/HW-1/lease?wait=5", {"licence_type": LT, "count": 1})
    assert status == 200
    kinds = {row["encoder"]: row["encoder_kind"] for row in await live_broker.leases()}
    assert kinds == {"CT-1": "container", "HW-1": "hardware"}
    status, refused = await agent.call("PUT", "/v1/encoders/X-1/lease", {**body, "encoder_kind": "vm"})
    assert status == 400 and refused["errors"] == [{"field": "encoder_kind", "message": "hardware or container"}]


async def _enrolled(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    config: Config | None = None,
) -> AgentHarness:
    await enroll_agent(config or agent_config, proxy.url, await live_broker.code())
    return await start_agent(config)


async def _active(agent: AgentHarness, encoder: str, count: int) -> dict[str, Any]:
    await agent.want(encoder, count)
    await agent.wait_state(encoder, "active")
    await agent.idle()  # its renewal timer is set: moving the clock now moves it too
    return await agent.lease(encoder)


async def advance_in_steps(clock: FakeClock, total: float, step: float = 5.0) -> None:
    """Move time in steps, giving each retry's round trip (real ms) time to land."""
    moved = 0.0
    while moved < total:
        hop = min(step, total - moved)
        await clock.advance(hop)
        moved += hop
        await asyncio.sleep(0.01)


async def test_renews_at_renew_after_with_jitter(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    first = await _active(agent, "ENC-1", 3)
    held = agent.keeper("ENC-1").record.held
    assert held is not None
    # The pool's lease is 300 s: renew_after is at 100 s, jitter within a tenth of the rest.
    renew_after_local = fake_clock.monotonic() - (fake_clock.now() - T0) + 100
    assert renew_after_local <= held.renew_at <= renew_after_local + 20 + 1e-6
    await fake_clock.advance(held.renew_at - fake_clock.monotonic() - 0.5)
    await agent.idle()  # a renewal sent too early would be in flight now, and waited for
    assert not any(r.endswith("/renew") for r in proxy.requests)
    await fake_clock.advance(1.0)
    await eventually(lambda: agent.keeper("ENC-1").record.held.expires_at > held.expires_at, what="renewal")
    # The renewed lease is saved before it is announced (a new version): wait for both.
    await eventually(lambda: agent.keeper("ENC-1").version > first["version"], what="the renewal announced")
    second = await agent.lease("ENC-1")
    assert second["lease"]["id"] == first["lease"]["id"]
    assert second["lease"]["token"] != first["lease"]["token"]
    assert second["version"] > first["version"]
    assert await live_broker.in_use() == 3


async def test_long_poll_returns_at_once_on_a_change(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    view = await _active(agent, "ENC-1", 2)
    poll = asyncio.ensure_future(agent.call("GET", f"/v1/encoders/ENC-1/lease?wait=300&version={view['version']}"))
    await eventually(lambda: agent.daemon.server.busy == 1, what="the long poll to arrive")
    assert not poll.done()
    await live_broker.call(
        "DELETE", f"/v1/estates/{live_broker.estate_id}/leases/{view['lease']['id']}", live_broker.admin, status=204
    )
    await fake_clock.advance(125)  # past renew_at: the renewal hears "revoked"
    status, changed = await asyncio.wait_for(poll, 5)
    assert status == 200
    assert changed["state"] == "revoked"
    assert changed["lease"] is None
    assert changed["error"]["code"] == "lease_revoked"


async def test_outage_shorter_than_the_lease_loses_nothing(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    first = await _active(agent, "ENC-1", 3)
    await proxy.down()
    await fake_clock.advance(121)  # past renew_at: the renewal fails
    await agent.wait_state("ENC-1", "offline")
    seen = set()
    for _ in range(20):  # 100 s more of outage; the lease (300 s) still holds
        await advance_in_steps(fake_clock, 5)
        view = await agent.lease("ENC-1")
        seen.add(view["state"])
        assert view["lease"]["token"] == first["lease"]["token"]
    assert seen == {"offline"}
    assert (await agent.lease("ENC-1"))["error"]["code"] == "broker_unavailable"
    await proxy.up()
    await advance_in_steps(fake_clock, 11)  # at most retry_max later it retries
    await agent.wait_state("ENC-1", "active")
    after = await agent.lease("ENC-1")
    assert after["lease"]["id"] == first["lease"]["id"]
    assert after["error"] is None
    assert await live_broker.in_use() == 3


async def test_outage_longer_than_the_lease_reports_loss_then_recovers(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    first = await _active(agent, "ENC-1", 3)
    deadline = agent.keeper("ENC-1").record.held.deadline
    await proxy.down()
    await advance_in_steps(fake_clock, deadline - fake_clock.monotonic() - 1, step=10)
    assert agent.keeper("ENC-1").state() == "offline"
    poll = asyncio.ensure_future(
        agent.call("GET", f"/v1/encoders/ENC-1/lease?wait=60&version={agent.keeper('ENC-1').version}")
    )
    await advance_in_steps(fake_clock, 2, step=1)
    _, lost = await asyncio.wait_for(poll, 5)
    assert lost["state"] == "lost" and lost["lease"] is None
    await advance_in_steps(fake_clock, 60, step=10)  # still away: still lost, still trying
    assert agent.keeper("ENC-1").state() == "lost"
    await proxy.up()
    await advance_in_steps(fake_clock, 11)
    await agent.wait_state("ENC-1", "active")
    again = await agent.lease("ENC-1")
    assert again["lease"]["count"] == 3
    assert again["lease"]["expires_at"] > first["lease"]["expires_at"]
    assert await live_broker.in_use() == 3


async def test_revoked_lease_is_not_taken_again(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    view = await _active(agent, "ENC-1", 2)
    await live_broker.call(
        "DELETE", f"/v1/estates/{live_broker.estate_id}/leases/{view['lease']['id']}", live_broker.admin, status=204
    )
    await fake_clock.advance(125)
    await agent.wait_state("ENC-1", "revoked")
    acquires = proxy.requests.count("POST /v1/leases")
    await advance_in_steps(fake_clock, 600, step=60)
    assert agent.keeper("ENC-1").state() == "revoked"
    assert proxy.requests.count("POST /v1/leases") == acquires
    assert await live_broker.in_use() == 0
    # The encoder asking again is a new decision: the agent acquires.
    await agent.want("ENC-1", 2)
    await agent.wait_state("ENC-1", "active")
    assert await live_broker.in_use() == 2


async def test_removed_server_revokes_its_leases(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    await _active(agent, "ENC-1", 2)
    await _active(agent, "ENC-2", 1)
    server_id = agent.daemon.host.bindings().server.server_id
    await live_broker.call(
        "DELETE", f"/v1/estates/{live_broker.estate_id}/servers/{server_id}", live_broker.admin, status=204
    )
    await fake_clock.advance(125)
    await agent.wait_state("ENC-1", "revoked")
    await agent.wait_state("ENC-2", "revoked")
    assert agent.keeper("ENC-1").record.error["code"] == "server_removed"


async def test_pool_exhausted_is_denied_and_a_refused_grow_keeps_the_lease(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    await agent.want("ENC-BIG", 11)
    await agent.wait_state("ENC-BIG", "denied")
    denied = await agent.lease("ENC-BIG")
    assert denied["error"]["code"] == "pool_exhausted"
    assert denied["lease"] is None
    held = await _active(agent, "ENC-1", 3)
    await agent.want("ENC-1", 20)
    await eventually(lambda: (agent.keeper("ENC-1").record.error or {}).get("code") == "pool_exhausted", what="refusal")
    view = await agent.lease("ENC-1")
    assert view["state"] == "active"
    assert view["lease"]["count"] == 3 and view["lease"]["id"] == held["lease"]["id"]
    assert await live_broker.in_use() == 3


async def test_shrink_keeps_the_lease_and_delete_releases_it(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    first = await _active(agent, "ENC-1", 4)
    await agent.want("ENC-1", 1)
    await eventually(
        lambda: agent.keeper("ENC-1").record.held.count == 1 and not agent.keeper("ENC-1").saving, what="shrink"
    )
    assert (await agent.lease("ENC-1"))["lease"]["id"] == first["lease"]["id"]
    assert await live_broker.in_use() == 1
    status, body = await agent.call("DELETE", "/v1/encoders/ENC-1/lease?wait=5")
    assert (status, body) == (200, {"encoder": "ENC-1", "state": "released"})
    assert await live_broker.in_use() == 0
    status, body = await agent.call("GET", "/v1/encoders/ENC-1/lease")
    assert status == 404 and body["code"] == "not_found"


async def test_tampered_token_is_never_served(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    proxy.tampering = True
    await agent.want("ENC-1", 2)
    await eventually(
        lambda: (agent.keeper("ENC-1").record.error or {}).get("code") == "token_rejected", what="rejection"
    )
    view = await agent.lease("ENC-1")
    assert view["state"] == "pending" and view["lease"] is None
    proxy.tampering = False
    await advance_in_steps(fake_clock, 11)
    await agent.wait_state("ENC-1", "active")
    shown = await agent.lease("ENC-1")
    assert shown["lease"] is not None and shown["lease"]["count"] == 2, shown
    assert await live_broker.in_use() == 2


async def test_stop_releases_and_keeps_the_wishes(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
) -> None:
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    await _active(agent, "ENC-1", 2)
    await _active(agent, "ENC-2", 3)
    await agent.stop()
    assert await live_broker.in_use() == 0
    stored = load_leases(agent_config.state_dir)
    assert stored.encoders["ENC-1"].want == Want(LT, 2)
    assert stored.encoders["ENC-1"].held is None
    # The next start acquires again for every encoder that still wants a lease.
    again = await start_agent()
    await again.wait_state("ENC-1", "active")
    await again.wait_state("ENC-2", "active")
    assert await live_broker.in_use() == 5


async def test_restart_readopts_leases_without_taking_seats_twice(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    keep = dataclasses.replace(agent_config, keep_leases_on_stop=True)
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy, keep)
    one = await _active(agent, "ENC-1", 2)
    two = await _active(agent, "ENC-2", 3)
    await agent.stop()
    assert await live_broker.in_use() == 5
    await fake_clock.advance(30)
    proxy.requests.clear()
    proxy.hold("/renew")
    again = await start_agent(keep)
    # Served at once from the stored lease, and renewed by id at once (a restart cannot
    # know how long it was down but from the host's wall clock): no new acquire.
    view = await again.lease("ENC-1")
    assert view["state"] == "active"
    assert view["lease"]["token"] == one["lease"]["token"]
    await eventually(lambda: proxy.holding == 2, what="both renewals on their way")
    proxy.let_go()
    for encoder, before in (("ENC-1", one), ("ENC-2", two)):
        await eventually(
            lambda e=encoder: (
                again.keeper(e).record.held.server_time  # type: ignore[misc]
                == int(fake_clock.now())
            ),
            what=f"{encoder}'s renewal",
        )
        assert (await again.lease(encoder))["lease"]["id"] == before["lease"]["id"]
    assert sorted(proxy.requests) == sorted(f"POST /v1/leases/{v['lease']['id']}/renew" for v in (one, two))
    assert await live_broker.in_use() == 5


async def test_a_grant_lost_in_a_crash_is_found_again(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
) -> None:
    """Crash after the broker granted but before the agent wrote it down."""
    keep = dataclasses.replace(agent_config, keep_leases_on_stop=True)
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy, keep)
    first = await _active(agent, "ENC-1", 4)
    await agent.stop()
    stored = load_leases(agent_config.state_dir)
    stored.encoders["ENC-1"].held = None
    save_leases(agent_config.state_dir, stored)
    again = await start_agent(keep)
    await again.wait_state("ENC-1", "active")
    assert (await again.lease("ENC-1"))["lease"]["id"] == first["lease"]["id"]
    assert await live_broker.in_use() == 4


async def test_domain_binding_takes_from_its_own_pool(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
) -> None:
    paris = await live_broker.new_pool("Paris", 4)
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    await enroll_agent(agent_config, proxy.url, await live_broker.code(paris), domain="tenant-a")
    agent = await start_agent()
    await agent.want("ENC-T", 3, domain="tenant-a")
    await agent.wait_state("ENC-T", "active")
    await _active(agent, "ENC-1", 1)
    assert await live_broker.in_use(paris) == 3
    assert await live_broker.in_use() == 1
    status, body = await agent.call(
        "PUT", "/v1/encoders/ENC-X/lease", {"licence_type": LT, "count": 1, "domain": "nope"}
    )
    assert status == 409 and body["code"] == "not_enrolled"
    # Moving an encoder to another domain gives the old seats back.
    await agent.want("ENC-T", 2)
    await eventually(
        lambda: (
            (held := agent.keeper("ENC-T").record.held) is not None
            and held.domain is None
            and not agent.keeper("ENC-T").saving
        ),
        what="move",
    )
    assert await live_broker.in_use(paris) == 0
    assert await live_broker.in_use() == 3


async def test_a_granted_lease_is_shown_only_once_it_is_saved(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
) -> None:
    """An encoder that polls while its new lease is being written to disk still sees it
    pending: told "active" and then killed, the agent would come back without the lease."""
    agent = await _enrolled(live_broker, agent_config, start_agent, proxy)
    runner = agent.runner
    saving, go_on = asyncio.Event(), asyncio.Event()
    save = runner._deps.save

    async def slow_save() -> None:
        saving.set()
        await go_on.wait()
        await save()

    runner._deps = dataclasses.replace(runner._deps, save=slow_save)  # keepers made from now on
    await agent.want("ENC-1", 2)
    await asyncio.wait_for(saving.wait(), 15)
    assert agent.keeper("ENC-1").record.held is not None  # granted, and being saved
    polled = await agent.lease("ENC-1")
    assert (polled["state"], polled["lease"]) == ("pending", None)
    go_on.set()
    await agent.wait_state("ENC-1", "active")
    shown = await agent.lease("ENC-1")
    assert shown["lease"] is not None and shown["lease"]["count"] == 2, shown
    assert [e.encoder for e in load_leases(agent_config.state_dir).encoders.values()] == ["ENC-1"]
