"""Agent faults (issue 6): the broker restarting, slow and dropped answers, garbage, another
broker's signatures, and the host's clock stepped either way while leases are held.

Real broker, real agent, ``Proxy`` in between, one manual clock. Whatever happens, two
things must hold at every step: no token is served once the broker's clock has reached
its ``exp`` (``assert_nothing_stale``), and no lease is dropped while the broker still
holds it for the encoder, nor a seat taken twice (``in_use`` on the broker).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from agent.config import Config
from agent.deadlines import deadline_margin
from tests.agent.harness import (
    AgentFactory,
    AgentHarness,
    FakeClock,
    LiveBroker,
    enroll_agent,
    eventually,
)
from tests.agent.proxy import STRANGER_KEY, Proxy

HOURS_2 = 2 * 3600.0
LEASE = 300  # the pool's lease lifetime (conftest's setup_estate)
WANTS = {"ENC-1": 2, "ENC-2": 1}


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def kid_of(token: str) -> str:
    head = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


async def start(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    config: Config | None = None,
    wants: dict[str, int] | None = None,
) -> tuple[AgentHarness, dict[str, dict[str, Any]]]:
    """An enrolled agent (through the proxy) whose encoders hold ``wants``; their leases."""
    config = config or agent_config
    await enroll_agent(config, proxy.url, await live_broker.code())
    agent = await start_agent(config)
    leases = {}
    for encoder, count in (wants or WANTS).items():
        await agent.want(encoder, count)
        await agent.wait_state(encoder, "active")
        leases[encoder] = (await agent.lease(encoder))["lease"]
    await agent.idle()
    return agent, leases


def assert_nothing_stale(agent: AgentHarness, clock: FakeClock) -> dict[str, dict[str, Any]]:
    """What each encoder is served now; fails if a token is past exp on the broker's clock."""
    views = {}
    for encoder in list(agent.runner.keepers):
        view = agent.keeper(encoder).view()
        lease = view["lease"]
        if lease is not None:
            exp = claims_of(lease["token"])["exp"]
            assert clock.now() < exp, (
                f"{encoder} is served a token that expired {clock.now() - exp:.0f} s ago "
                f"on the broker's clock (state {view['state']})"
            )
        views[encoder] = view
    return views


async def advance_until(
    clock: FakeClock,
    agent: AgentHarness,
    condition: Callable[[], bool],
    *,
    what: str,
    step: float = 2.0,
    within: float = 120.0,
) -> float:
    """Move the clock ``step`` at a time until ``condition`` holds; after each step, the
    round trips it set off land (real milliseconds) and the tokens served are checked."""
    moved = 0.0
    while not condition():
        assert moved < within, f"{what}: not within {within:g} s of clock time"
        await clock.advance(step)
        moved += step
        await agent.idle()
        assert_nothing_stale(agent, clock)
    return moved


def renewed(agent: AgentHarness, before: dict[str, dict[str, Any]]) -> Callable[[], bool]:
    """True once every encoder holds the same lease as ``before`` with a later expiry."""

    def check() -> bool:
        for encoder, lease in before.items():
            held = agent.keeper(encoder).record.held
            if held is None or held.lease_id != lease["id"] or held.expires_at <= claims_of(lease["token"])["exp"]:
                return False
        return agent.keeper(next(iter(before))).state() == "active"

    return check


def states(agent: AgentHarness, *wanted: str) -> Callable[[], bool]:
    return lambda: all(agent.keeper(e).state() in wanted for e in agent.runner.keepers)


async def assert_books(broker: LiveBroker, leases: dict[str, dict[str, Any]]) -> None:
    """The broker holds exactly these leases (by id), each seat once."""
    assert await broker.in_use() == sum(lease["count"] for lease in leases.values())
    assert sorted(lease["id"] for lease in await broker.leases()) == sorted(lease["id"] for lease in leases.values())


# --------------------------------------------------------------------------- broker restart


async def test_broker_restart_leases_carry_on_and_renewals_resume(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    agent, first = await start(live_broker, agent_config, start_agent, proxy)
    await live_broker.stop()
    # Past renew_after: the renewals meet a stopped broker; the leases are still served.
    await advance_until(fake_clock, agent, states(agent, "offline"), what="offline", step=5)
    views = assert_nothing_stale(agent, fake_clock)
    assert {e: v["lease"]["token"] for e, v in views.items()} == {e: v["token"] for e, v in first.items()}
    await live_broker.start()  # same data directory, same port
    await advance_until(fake_clock, agent, renewed(agent, first), what="renewals after the restart")
    for encoder, lease in first.items():
        view = await agent.lease(encoder)
        assert view["state"] == "active" and view["error"] is None
        assert view["lease"]["id"] == lease["id"]
    await assert_books(live_broker, first)
    assert proxy.requests.count("POST /v1/leases") == len(first)  # never acquired again
    # And they go on being renewed on schedule.
    second = {e: (await agent.lease(e))["lease"] for e in first}
    await advance_until(fake_clock, agent, renewed(agent, second), what="the next renewals", step=5)
    await assert_books(live_broker, first)


# --------------------------------------------------------------------------- slow answers


async def test_slow_answers_are_retried_and_the_lease_kept_until_its_deadline(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    config = dataclasses.replace(agent_config, request_timeout=0.5)  # real seconds
    agent, first = await start(live_broker, config, start_agent, proxy, config, {"ENC-1": 2})
    held = agent.keeper("ENC-1").record.held
    assert held is not None
    # The broker renews at once, but its answers arrive after the agent stopped waiting.
    proxy.hold("/renew", answer=True)
    await fake_clock.advance(held.renew_at - fake_clock.monotonic() + 0.1)
    await agent.wait_state("ENC-1", "offline")
    view = await agent.lease("ENC-1")
    assert view["error"]["code"] == "broker_unavailable"
    assert "no answer within 0.5 s" in view["error"]["detail"]
    assert view["lease"]["token"] == first["ENC-1"]["token"]
    # Retried (in a few long hops: each attempt costs half a real second to time out)
    # while the lease is served, right up to the agent's deadline.
    renewals = lambda: proxy.requests.count(f"POST /v1/leases/{first['ENC-1']['id']}/renew")  # noqa: E731
    for hop in range(3):
        tried = renewals()
        await fake_clock.advance((held.deadline - fake_clock.monotonic() - 1) / (3 - hop))
        await agent.idle()  # the retry went, and timed out
        assert renewals() > tried
        view = agent.keeper("ENC-1").view()
        assert view["state"] == "offline"
        assert view["lease"]["token"] == first["ENC-1"]["token"]
        assert_nothing_stale(agent, fake_clock)
    assert renewals() >= 4
    # At the deadline, and not before the broker's exp, it is no longer served.
    await fake_clock.advance(held.deadline - fake_clock.monotonic())
    assert agent.keeper("ENC-1").view()["lease"] is None
    assert fake_clock.now() < claims_of(first["ENC-1"]["token"])["exp"]
    # The network recovers: the lease, renewed all along at the broker, is found again.
    proxy.let_go()
    await advance_until(fake_clock, agent, states(agent, "active"), what="active again")
    assert agent.keeper("ENC-1").record.held.lease_id == first["ENC-1"]["id"]  # type: ignore[union-attr]
    await assert_books(live_broker, first)


# --------------------------------------------------------------------------- dropped connections


@pytest.mark.parametrize("kind", ["drop_request", "drop_answer", "cut_answer"])
async def test_dropped_connections_are_retried_without_a_second_seat(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
    kind: str,
) -> None:
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    agent = await start_agent()
    # The acquire: twice the connection goes (for drop_answer and cut_answer, after the
    # broker has granted), then it gets through.
    acquire = proxy.fault("/v1/leases", kind, times=2)
    await agent.want("ENC-1", 3)
    await advance_until(fake_clock, agent, states(agent, "active"), what="the acquire", step=0.5)
    assert acquire.fired == 2
    assert proxy.requests.count("POST /v1/leases") == 3
    first = {"ENC-1": (await agent.lease("ENC-1"))["lease"]}
    await assert_books(live_broker, first)
    # A renewal: the same, then it gets through; the lease is served throughout.
    renew = proxy.fault("/renew", kind, times=2)
    await advance_until(fake_clock, agent, renewed(agent, first), what="the renewal", within=200)
    assert renew.fired == 2
    assert (await agent.lease("ENC-1"))["lease"]["id"] == first["ENC-1"]["id"]
    await assert_books(live_broker, first)


# --------------------------------------------------------------------------- garbage


GARBAGE = {
    "not_json_200": (200, b"OK", "text/plain"),
    "truncated_json": (200, b'{"id": "lse_0123", "token": "eyJhbGciOiJFZERTQSIsInR5cCI6Ik', "application/json"),
    "json_not_a_lease": (200, b'{"status": "ok"}', "application/json"),
    "html_502": (502, b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "text/html"),
    "html_200": (200, b"<!doctype html><title>Sign in to the guest network</title>", "text/html"),
    "html_404": (404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html"),
}


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_garbage_from_the_broker_is_retried_and_never_served(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
    name: str,
) -> None:
    status, body, content_type = GARBAGE[name]
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    agent = await start_agent()
    acquire = proxy.fault("/v1/leases", "replace", times=2, status=status, body=body, content_type=content_type)
    await agent.want("ENC-1", 2)
    await eventually(
        lambda: acquire.fired >= 1 and agent.keeper("ENC-1").record.error is not None, what="the garbled answer"
    )
    view = await agent.lease("ENC-1")
    assert view["state"] == "pending" and view["lease"] is None
    assert view["error"]["code"] == "broker_unavailable"
    await advance_until(fake_clock, agent, states(agent, "active"), what="the acquire", step=0.5)
    first = {"ENC-1": (await agent.lease("ENC-1"))["lease"]}
    await assert_books(live_broker, first)  # the garbled grants were the same lease
    # Renewals answered with garbage until the deadline: the lease is served (offline),
    # never dropped early and never replaced by anything but a verified token.
    renew = proxy.fault("/renew", "replace", times=None, status=status, body=body, content_type=content_type)
    held = agent.keeper("ENC-1").record.held
    assert held is not None
    await advance_until(
        fake_clock,
        agent,
        lambda: fake_clock.monotonic() >= held.deadline - 6,
        what="almost the deadline",
        step=5,
        within=400,
    )
    assert renew.fired >= 2
    view = await agent.lease("ENC-1")
    assert view["state"] == "offline"
    assert view["lease"]["token"] == first["ENC-1"]["token"]
    proxy.clear()
    await advance_until(fake_clock, agent, renewed(agent, first), what="the renewal")
    await assert_books(live_broker, first)


# --------------------------------------------------------------------------- another broker's key


async def test_another_brokers_signature_is_never_served(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    await enroll_agent(agent_config, proxy.url, await live_broker.code())
    agent = await start_agent()
    broker_kids = {k["kid"] for k in (await live_broker.call("GET", "/v1/keys", status=200))["keys"]}
    assert STRANGER_KEY.kid not in broker_kids
    resign = proxy.fault("/v1/leases", "resign", times=None)
    await agent.want("ENC-1", 2)
    await eventually(
        lambda: (agent.keeper("ENC-1").record.error or {}).get("code") == "token_rejected", what="the rejection"
    )
    # It did not take the unknown kid on trust: it fetched the broker's key set (through
    # the same channel), found no such key, and served nothing.
    assert proxy.requests.count("GET /v1/keys") == 1
    assert "unknown" in agent.keeper("ENC-1").record.error["detail"]  # type: ignore[index]
    for _ in range(12):  # a minute of retries: never served, key set fetched ≤ once per 10 s
        await fake_clock.advance(5)
        await agent.idle()
        view = await agent.lease("ENC-1")
        assert view["lease"] is None and view["state"] == "pending"
    assert resign.fired >= 4
    assert 2 <= proxy.requests.count("GET /v1/keys") <= 7
    resign.times = 0  # the stranger is gone
    await advance_until(fake_clock, agent, states(agent, "active"), what="the acquire")
    first = {"ENC-1": (await agent.lease("ENC-1"))["lease"]}
    assert kid_of(first["ENC-1"]["token"]) in broker_kids
    await assert_books(live_broker, first)
    # A renewal signed by the stranger: the verified token is served until its deadline,
    # the stranger's never.
    proxy.fault("/renew", "resign", times=None)
    held = agent.keeper("ENC-1").record.held
    assert held is not None
    await advance_until(
        fake_clock,
        agent,
        lambda: fake_clock.monotonic() >= held.deadline - 6,
        what="almost the deadline",
        step=5,
        within=400,
    )
    view = await agent.lease("ENC-1")
    assert view["state"] == "offline" and view["error"]["code"] == "token_rejected"
    assert view["lease"]["token"] == first["ENC-1"]["token"]
    await fake_clock.advance(held.deadline - fake_clock.monotonic())
    assert agent.keeper("ENC-1").view()["lease"] is None
    assert fake_clock.now() < claims_of(first["ENC-1"]["token"])["exp"]


# --------------------------------------------------------------------------- host clock steps


@pytest.mark.parametrize("step", [HOURS_2, -HOURS_2], ids=["forward", "back"])
@pytest.mark.parametrize("broker", ["reachable", "away"])
async def test_host_clock_steps_neither_drop_nor_stretch_a_lease(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
    step: float,
    broker: str,
) -> None:
    agent, first = await start(live_broker, agent_config, start_agent, proxy)
    exp = min(claims_of(lease["token"])["exp"] for lease in first.values())
    if broker == "away":
        await proxy.down()
    fake_clock.step_wall(step)
    await agent.idle()
    # At once: nothing dropped, nothing asked of the broker.
    requests = len(proxy.requests)
    for encoder, lease in first.items():
        view = await agent.lease(encoder)
        assert view["state"] == "active", (encoder, view["state"])
        assert view["lease"]["token"] == lease["token"]
        assert 0 < view["lease"]["expires_in"] <= LEASE
    assert len(proxy.requests) == requests
    # Then over a lease and a half: at every step, served as long as the broker holds it
    # (less the agent's small margin), never once its exp has passed.
    margin = deadline_margin(LEASE)
    served_until = 0.0
    for _ in range(45):
        await fake_clock.advance(10)
        await agent.idle()
        views = assert_nothing_stale(agent, fake_clock)
        if fake_clock.now() < exp - margin:
            assert all(v["lease"] is not None for v in views.values()), views
        if all(v["lease"] is not None for v in views.values()):
            served_until = fake_clock.now()
    if broker == "reachable":
        # Renewed on schedule (every 100-120 s, not stalled by a clock gone back nor
        # hurried by one gone forward), never acquired again, no seat twice.
        await eventually(renewed(agent, first), what="renewals")
        renewals = sum(r.endswith("/renew") for r in proxy.requests)
        assert 3 * len(first) <= renewals <= 5 * len(first), proxy.requests
        assert proxy.requests.count("POST /v1/leases") == len(first)
        assert served_until == fake_clock.now()
        await assert_books(live_broker, first)
    else:
        assert exp - margin - 10 <= served_until < exp
        assert all(agent.keeper(e).state() == "lost" for e in first)


async def test_a_restart_after_the_clock_went_back_serves_no_token_past_its_expiry(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    """Monotonic time does not survive a restart; the stored wall-clock deadline is only an
    upper bound, and never stretches a lease past its lifetime."""
    keep = dataclasses.replace(agent_config, keep_leases_on_stop=True)
    agent, first = await start(live_broker, agent_config, start_agent, proxy, keep)
    exp = min(claims_of(lease["token"])["exp"] for lease in first.values())
    await agent.stop()
    await fake_clock.advance(60)
    fake_clock.step_wall(-HOURS_2)
    await proxy.down()
    again = await start_agent(keep)
    for encoder, lease in first.items():  # served at once from the stored lease
        view = await again.lease(encoder)
        assert view["state"] in ("active", "offline")
        assert view["lease"]["token"] == lease["token"]
    for _ in range(30):
        await fake_clock.advance(10)
        await again.idle()
        assert_nothing_stale(again, fake_clock)
    assert fake_clock.now() > exp
    assert all(again.keeper(e).state() == "lost" for e in first)
    # The broker back: found again by id or acquired, never a seat twice.
    await proxy.up()
    await advance_until(fake_clock, again, states(again, "active"), what="active again")
    now = {e: (await again.lease(e))["lease"] for e in first}
    await assert_books(live_broker, now)


async def test_a_restart_after_the_clock_went_forward_keeps_the_lease(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    """On the same boot the stored monotonic deadline stands: a wall clock gone forward
    while the agent was down drops nothing; the lease is renewed by id at once."""
    keep = dataclasses.replace(agent_config, keep_leases_on_stop=True)
    agent, first = await start(live_broker, agent_config, start_agent, proxy, keep)
    await agent.stop()
    await fake_clock.advance(30)
    fake_clock.step_wall(HOURS_2)  # the stored wall-clock deadlines look long past
    proxy.requests.clear()
    proxy.hold("/renew")
    again = await start_agent(keep)
    for encoder, lease in first.items():
        view = await again.lease(encoder)
        assert view["state"] == "active" and view["lease"]["token"] == lease["token"]
    proxy.let_go()
    await eventually(
        lambda: all(
            again.keeper(e).record.held.server_time  # type: ignore[union-attr]
            == int(fake_clock.now())
            for e in first
        ),
        what="the renewals",
    )
    assert sorted(proxy.requests) == sorted(f"POST /v1/leases/{v['id']}/renew" for v in first.values())
    await assert_books(live_broker, first)


async def test_after_a_reboot_the_wall_clock_bounds_a_stored_lease_by_its_lifetime(
    live_broker: LiveBroker,
    agent_config: Config,
    start_agent: AgentFactory,
    proxy: Proxy,
    fake_clock: FakeClock,
) -> None:
    """After a reboot only the wall clock links then and now. Gone forward: the stored
    lease is taken as expired and found again at the broker (no seat twice). Gone back:
    it is served no longer than one lifetime, not for the two hours the clock says."""
    keep = dataclasses.replace(agent_config, keep_leases_on_stop=True)
    agent, first = await start(live_broker, agent_config, start_agent, proxy, keep)
    await agent.stop()
    await fake_clock.advance(30)
    fake_clock.reboot()
    fake_clock.step_wall(HOURS_2)
    proxy.requests.clear()
    again = await start_agent(keep)
    await eventually(states(again, "active"), what="active again")
    for encoder, lease in first.items():
        assert (await again.lease(encoder))["lease"]["id"] == lease["id"]
    await assert_books(live_broker, first)
    await again.stop()  # keeps the leases, just acquired again at T0 + 30

    await fake_clock.advance(30)
    fake_clock.reboot()
    fake_clock.step_wall(-2 * HOURS_2)
    await proxy.down()
    third = await start_agent(keep)
    restarted = fake_clock.now()
    await third.idle()
    last_served = 0.0
    for _ in range(40):
        await fake_clock.advance(10)
        await third.idle()
        if all(third.keeper(e).view()["lease"] is not None for e in first):
            last_served = fake_clock.now()
    assert restarted + LEASE - 60 <= last_served <= restarted + LEASE
    assert all(third.keeper(e).state() == "lost" for e in first)
