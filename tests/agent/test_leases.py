"""The service end to end: a real broker, a real agent, the socket API, a shared clock."""

from __future__ import annotations

from agent.config import Config
from tests.agent.conftest import LT, AgentFactory, FakeClock, LiveBroker, Proxy, enroll_agent


async def test_acquire_through_the_socket(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory
) -> None:
    await enroll_agent(agent_config, live_broker.url, await live_broker.code())
    agent = await start_agent()
    status, view = await agent.call(
        "PUT", "/v1/encoders/ENC-1/lease?wait=5", {"licence_type": LT, "count": 3}
    )
    assert status == 200, view
    assert view["state"] == "active"
    assert view["lease"]["count"] == 3
    assert view["lease"]["token"].count(".") == 2
    assert await live_broker.in_use() == 3
