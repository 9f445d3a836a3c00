"""What the broker changes under a running agent: a lease it lapsed, a signing key it rotated.

Both against the real broker and a real agent, through ``Proxy``, on the shared clock.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import Config
from agent.records import load_leases
from broker.cli import rotate_keys
from broker.config import load
from tests.agent.harness import (
    AgentFactory,
    AgentHarness,
    FakeClock,
    LiveBroker,
    enroll_agent,
    eventually,
    serve_broker,
)
from tests.agent.proxy import Proxy


def kid_of(token: str) -> str:
    head = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


async def _active(
    broker: LiveBroker, proxy: Proxy, agent_config: Config, start_agent: AgentFactory, encoder: str, count: int
) -> tuple[AgentHarness, dict[str, object]]:
    await enroll_agent(agent_config, proxy.url, await broker.code())
    agent = await start_agent()
    await agent.want(encoder, count)
    await agent.wait_state(encoder, "active")
    return agent, (await agent.lease(encoder))["lease"]


async def test_a_renewal_answered_lapsed_acquires_again_on_its_own(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agent")
    agent, first = await _active(live_broker, proxy, agent_config, start_agent, "ENC-1", 3)
    held = agent.keeper("ENC-1").record.held
    assert held is not None
    # The renewal leaves on time but is held up on the way until the lease (300 s) has
    # expired at the broker, which then answers 410 lease_gone, reason "lapsed".
    proxy.hold("/renew")
    await fake_clock.advance(held.renew_at - fake_clock.monotonic() + 0.1)
    await eventually(lambda: proxy.holding == 1, what="the renewal to be on its way")
    await fake_clock.advance(300)
    assert await live_broker.in_use() == 0  # lapsed: the seats are back in the pool
    proxy.let_go()
    await eventually(
        lambda: (
            (h := agent.keeper("ENC-1").record.held) is not None
            and h.lease_id != first["id"]
            and not agent.keeper("ENC-1").saving
        ),
        what="a new lease",
    )
    await agent.wait_state("ENC-1", "active")
    # Unlike a lease an admin released or revoked, nobody had to ask again.
    view = await agent.lease("ENC-1")
    assert view["lease"]["count"] == 3
    assert view["error"] is None
    assert agent.keeper("ENC-1").record.halted is None
    assert await live_broker.in_use() == 3
    live = [lease["id"] for lease in await live_broker.leases()]
    assert live == [view["lease"]["id"]]
    assert f"lease {first['id']} of encoder ENC-1 is gone (lapsed); acquiring again" in caplog.text
    assert [r for r in proxy.requests if r.endswith("/renew")] == [f"POST /v1/leases/{first['id']}/renew"]
    # The new lease is kept like any other: it is renewed at its own renew_after.
    fresh = agent.keeper("ENC-1").record.held
    assert fresh is not None
    await fake_clock.advance(fresh.renew_at - fake_clock.monotonic() + 0.1)
    await eventually(
        lambda: (
            (h := agent.keeper("ENC-1").record.held) is not None
            and h.expires_at > fresh.expires_at
            and not agent.keeper("ENC-1").saving
        ),
        what="the new lease's renewal",
    )


@pytest.fixture
async def rotating_broker(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[LiveBroker]:
    """A broker that re-reads its signing keys every 50 ms (real time)."""
    async with serve_broker(tmp_path / "broker", fake_clock, key_reload_seconds=0.05) as broker:
        yield broker


@pytest.fixture
async def rotating_proxy(rotating_broker: LiveBroker) -> AsyncIterator[Proxy]:
    proxy = Proxy(rotating_broker.url)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_key_rotation_on_a_live_broker_is_fetched_and_verified(
    rotating_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    rotating_proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    broker, proxy = rotating_broker, rotating_proxy
    agent, first = await _active(broker, proxy, agent_config, start_agent, "ENC-1", 2)
    old_kid = kid_of(str(first["token"]))
    ring = agent.daemon.host.keyring(proxy.url)
    assert ring.kids == {old_kid}  # pinned at enrolment

    new_key = await rotate_keys(load(None, env={}, data_dir=broker.data_dir))
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while new_key.kid not in {k["kid"] for k in (await broker.call("GET", "/v1/keys", status=200))["keys"]}:
        assert loop.time() < end, "the broker did not pick up the new key"
        await asyncio.sleep(0.02)
    assert not any(r == "GET /v1/keys" for r in proxy.requests)

    held = agent.keeper("ENC-1").record.held
    assert held is not None
    await fake_clock.advance(held.renew_at - fake_clock.monotonic() + 0.1)
    await eventually(
        lambda: (
            (h := agent.keeper("ENC-1").record.held) is not None
            and h.expires_at > held.expires_at
            and not agent.keeper("ENC-1").saving
        ),
        what="the renewal",
    )
    view = await agent.lease("ENC-1")
    assert view["state"] == "active"
    assert view["lease"]["id"] == first["id"]
    assert kid_of(view["lease"]["token"]) == new_key.kid
    # It met an unknown kid, fetched the key set once over the same channel, and kept both.
    assert proxy.requests.count("GET /v1/keys") == 1
    assert ring.kids == {old_kid, new_key.kid}
    # The fetched keys are kept with the leases, so a restart verifies without asking.
    await eventually(
        lambda: new_key.kid in json.dumps(load_leases(agent_config.state_dir).keys.get(proxy.url)),
        what="the new key to be saved",
    )
    # A new encoder's token, signed by the new key, needs no further fetch.
    await agent.want("ENC-2", 1)
    await agent.wait_state("ENC-2", "active")
    assert kid_of((await agent.lease("ENC-2"))["lease"]["token"]) == new_key.kid
    assert proxy.requests.count("GET /v1/keys") == 1
