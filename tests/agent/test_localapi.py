"""The local socket API's own rules: validation, errors, permissions, one agent per socket."""

from __future__ import annotations

import asyncio
import contextlib
import stat

import pytest

from agent.config import Config
from agent.daemon import Daemon
from agent.encoder_client import AgentNotRunning, EncoderClient
from agent.localapi import SHUTDOWN_TIMEOUT
from shared.sdnotify import Notifier
from tests.agent.harness import LT, AgentFactory, FakeClock, LiveBroker, enroll_agent, eventually, settle


async def test_socket_is_0660_and_removed_on_stop(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    assert stat.S_IMODE(agent.config.socket.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(agent.config.socket.stat().st_mode)
    await agent.stop()
    assert not agent.config.socket.exists()


async def test_a_second_agent_on_the_same_socket_is_refused(start_agent: AgentFactory, agent_config: Config) -> None:
    await start_agent()
    second = Daemon(agent_config, notifier=Notifier(env={}))
    with pytest.raises(OSError, match="another tenure-agent is serving"):
        await second.start()
    await second.host.runner.stop(release=False, within=0)


async def test_a_stale_socket_file_is_replaced(start_agent: AgentFactory, agent_config: Config) -> None:
    agent_config.socket.write_text("left behind by a crash")
    agent = await start_agent()
    status, _ = await agent.call("GET", "/v1/status")
    assert status == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"licence_type": LT}, "count"),
        ({"licence_type": LT, "count": 0}, "count"),
        ({"licence_type": LT, "count": 10_001}, "count"),
        ({"licence_type": LT, "count": True}, "count"),
        ({"licence_type": "One In One Out", "count": 1}, "licence_type"),
        ({"licence_type": LT, "count": 1, "colour": "blue"}, "colour"),
        ({"licence_type": LT, "count": 1, "domain": ""}, "domain"),
    ],
)
async def test_bad_requests_are_problem_documents(
    start_agent: AgentFactory, body: dict[str, object], field: str
) -> None:
    agent = await start_agent()
    status, problem = await agent.call("PUT", "/v1/encoders/ENC-1/lease", body)
    assert status == 400
    assert problem["code"] == "validation_error"
    assert field in [e["field"] for e in problem["errors"]]


async def test_bad_serials_and_waits(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    status, problem = await agent.call("GET", "/v1/encoders/bad%20serial/lease")
    assert (status, problem["code"]) == (400, "validation_error")
    status, problem = await agent.call("GET", "/v1/encoders/ENC-1/lease?wait=9999&version=1")
    assert (status, problem["code"]) == (400, "validation_error")


async def test_not_enrolled_is_a_clear_refusal(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    status, problem = await agent.call("PUT", "/v1/encoders/ENC-1/lease", {"licence_type": LT, "count": 1})
    assert status == 409
    assert problem["code"] == "not_enrolled"
    assert "tenure-agent enroll" in problem["detail"]
    status, problem = await agent.call("DELETE", "/v1/encoders/ENC-1/lease")
    assert (status, problem["code"]) == (404, "not_found")


async def test_encoder_client_watch_follows_changes(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory
) -> None:
    await enroll_agent(agent_config, live_broker.url, await live_broker.code())
    await start_agent()
    client = EncoderClient(agent_config.socket)

    def watch() -> list[str]:
        seen = []
        client.acquire("ENC-1", LT, 2, wait=5)
        for lease in client.watch("ENC-1", poll=5):
            seen.append(lease.state)
            if lease.state == "active":
                client.release("ENC-1", wait=5)
        return seen

    seen = await asyncio.to_thread(watch)
    assert seen[0] == "active"
    assert seen[-1] in ("releasing", "active")
    assert await live_broker.in_use() == 0


def test_encoder_client_without_an_agent(agent_config: Config) -> None:
    with pytest.raises(AgentNotRunning, match="not running"):
        EncoderClient(agent_config.socket).lease("ENC-1")


async def test_unknown_paths_methods_and_big_bodies_are_problem_documents(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    status, problem = await agent.call("GET", "/v1/nothing-here")
    assert (status, problem["code"]) == (404, "not_found")
    status, problem = await agent.call("POST", "/v1/encoders/ENC-1/lease", {})
    assert (status, problem["code"]) == (405, "method_not_allowed")
    status, problem = await agent.call("DELETE", "/v1/status")
    assert (status, problem["code"]) == (405, "method_not_allowed")
    big = {"licence_type": LT, "count": 1, "domain": "x" * (70 * 1024)}
    status, problem = await agent.call("PUT", "/v1/encoders/ENC-1/lease", big)
    assert (status, problem["code"]) == (413, "payload_too_large")


async def test_a_long_poll_does_not_hold_up_stopping(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory, fake_clock: FakeClock
) -> None:
    """Encoders long-poll all the time; stopping must still release within stop_timeout."""
    await enroll_agent(agent_config, live_broker.url, await live_broker.code())
    agent = await start_agent()
    view = await agent.want("ENC-1", 2)
    await agent.wait_state("ENC-1", "active")
    view = await agent.lease("ENC-1")
    for odd in ("%D9%A3", "%EF%BC%93", "-1", "1e3"):  # Arabic-Indic 3, full-width 3: not ASCII
        status, problem = await agent.call("GET", f"/v1/encoders/ENC-1/lease?wait=1&version={odd}")
        assert (status, problem["code"]) == (400, "validation_error"), odd
    poll = asyncio.ensure_future(agent.call("GET", f"/v1/encoders/ENC-1/lease?wait=300&version={view['version']}"))
    await eventually(lambda: agent.daemon.server.busy == 1, what="the long poll to arrive")
    loop = asyncio.get_running_loop()
    began = loop.time()
    stopping = asyncio.ensure_future(agent.stop())
    await settle()
    assert not stopping.done()  # the poll is given its grace...
    await fake_clock.advance(SHUTDOWN_TIMEOUT)  # ...on the agent's clock, then cut
    await asyncio.wait_for(stopping, 5)
    assert loop.time() - began < SHUTDOWN_TIMEOUT  # no real second was slept through
    assert await live_broker.in_use() == 0
    with contextlib.suppress(Exception):  # cut off, or answered: either is fine
        await poll
