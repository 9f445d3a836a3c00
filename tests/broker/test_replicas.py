"""Two brokers on one database are interchangeable: what a request depends on is in the
database, not in either process (console sessions, redemption budgets, the reaper)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker import reaper
from broker.app import create_app
from broker.clock import ManualClock
from broker.console import COOKIE
from broker.console.sessions import IDLE_SECONDS, TOUCH_SECONDS
from broker.errors import RateLimited
from broker.ratelimit import IPAddress
from broker.services import SERVICES
from tests.broker.leasing import make_site
from tests.conftest import Broker

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def pair(
    aiohttp_client: MakeClient, config_factory: Callable[..., Any], clock: ManualClock, operator_token: str
) -> tuple[Broker, Broker]:
    """Two brokers, each its own app and store, on one data directory (one database file)."""
    config = config_factory(trusted_proxies="127.0.0.1/32")
    a = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    b = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    return a, b


async def _sign_in(broker: Broker, token: str) -> dict[str, str]:
    r = await broker.client.post("/console/session", json={"token": token})
    assert r.status == 200, await r.text()
    csrf = (await r.json())["csrf_token"]
    broker.client.session.cookie_jar.clear()  # the cookie is sent by hand, to either broker
    return {"Cookie": f"{COOKIE}={r.cookies[COOKIE].value}", "X-CSRF-Token": csrf}


async def test_a_console_session_carries_across_brokers(pair: tuple[Broker, Broker]) -> None:
    a, b = pair
    est = await a.estate()
    session = await _sign_in(a, est["admin_token"])
    me = await b.call("GET", "/v1/me", headers=session, status=200)
    assert me["kind"] == "admin" and me["estate_id"] == est["id"]
    # The CSRF token a gave is the one b checks.
    made = await b.call("POST", f"/v1/estates/{est['id']}/pools", json={"name": "P"}, headers=session, status=201)
    assert made["name"] == "P"
    info = await (await b.client.get("/console/session", headers=session)).json()
    assert info["csrf_token"] == session["X-CSRF-Token"]
    # Used through b, the session's idle deadline moves on for a as well.
    for _ in range(3):
        b.clock.advance(IDLE_SECONDS - 60)
        await b.call("GET", "/v1/me", headers=session, status=200)
    await a.call("GET", "/v1/me", headers=session, status=200)
    # Signed out through b: over on a.
    r = await b.client.delete("/console/session", headers=session)
    assert r.status == 204
    problem = await a.call("GET", "/v1/me", headers=session, status=401)
    assert "session ended" in problem["detail"]


async def test_a_removed_admins_session_ends_on_every_broker(pair: tuple[Broker, Broker]) -> None:
    a, b = pair
    est = await a.estate()
    bob = await a.call("POST", f"/v1/estates/{est['id']}/admins", est["admin_token"], {"name": "Bob"}, 201)
    session = await _sign_in(b, bob["token"])
    await b.call("GET", "/v1/me", headers=session, status=200)
    await a.call("DELETE", f"/v1/estates/{est['id']}/admins/{bob['id']}", est["admin_token"], status=204)
    # b has the session (and maybe Bob's principal) in hand from a moment ago; it still ends.
    await b.call("GET", "/v1/me", headers=session, status=401)
    r = await b.client.get("/console/session", headers=session)
    assert r.status == 401 and (await r.json())["code"] == "session_ended"


async def test_a_removed_admins_token_stops_working_on_every_broker_at_once(pair: tuple[Broker, Broker]) -> None:
    a, b = pair
    est = await a.estate()
    bob = await a.call("POST", f"/v1/estates/{est['id']}/admins", est["admin_token"], {"name": "Bob"}, 201)
    await b.call("GET", "/v1/me", bob["token"], status=200)  # b has just looked Bob's token up
    await a.call("DELETE", f"/v1/estates/{est['id']}/admins/{bob['id']}", est["admin_token"], status=204)
    await b.call("GET", "/v1/me", bob["token"], status=401)  # at once, not after a cache's life


async def test_a_server_removed_through_one_broker_cannot_open_a_stream_on_another(
    pair: tuple[Broker, Broker],
) -> None:
    a, b = pair
    site = await make_site(a)
    r = await b.client.get("/v1/stream", headers={"Authorization": f"Bearer {site.server}"})
    assert r.status == 200  # b has looked the server's token up (and caches it for minutes)
    r.close()
    await a.call("DELETE", f"/v1/estates/{site.estate_id}/servers/{site.server_id}", site.admin, status=204)
    r = await b.client.get("/v1/stream", headers={"Authorization": f"Bearer {site.server}"})
    assert r.status == 401 and (await r.json())["code"] == "unauthenticated"


async def test_a_console_session_survives_a_restart(
    aiohttp_client: MakeClient, config_factory: Callable[..., Any], clock: ManualClock, operator_token: str
) -> None:
    config = config_factory()
    first = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    est = await first.estate()
    session = await _sign_in(first, est["admin_token"])
    await first.client.close()  # the broker stops: its clean-up closes the database
    again = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    me = await again.call("GET", "/v1/me", headers=session, status=200)
    assert me["estate_id"] == est["id"]


async def test_last_use_is_written_at_most_once_a_minute(broker: Broker) -> None:
    est = await broker.estate()
    session = await _sign_in(broker, est["admin_token"])
    store = broker.client.app[SERVICES].store
    broker.clock.advance(TOUCH_SECONDS)
    await broker.call("GET", "/v1/me", headers=session, status=200)  # records this use
    commits = store.stats.commits
    for _ in range(5):
        broker.clock.advance(TOUCH_SECONDS / 6)
        await broker.call("GET", "/v1/me", headers=session, status=200)
    assert store.stats.commits == commits  # reads only
    broker.clock.advance(TOUCH_SECONDS / 6)
    await broker.call("GET", "/v1/me", headers=session, status=200)
    assert store.stats.commits == commits + 1


async def _guess(broker: Broker, address: str) -> int:
    r = await broker.client.post(
        "/v1/enroll", json={"code": "00000000", "name": "h"}, headers={"X-Forwarded-For": address}
    )
    return r.status


async def test_a_wrong_code_budget_spent_across_brokers_is_one_budget(pair: tuple[Broker, Broker]) -> None:
    a, b = pair
    await a.estate()  # a code key and something to guess at
    statuses = [await _guess(a if i % 2 else b, "198.51.100.7") for i in range(10)]
    assert statuses == [403] * 10
    assert await _guess(a, "198.51.100.7") == 429
    assert await _guess(b, "198.51.100.7") == 429
    assert await _guess(b, "198.51.100.8") == 403  # another address has its own budget
    a.clock.advance(901)  # the window has passed, for both
    assert await _guess(b, "198.51.100.7") == 403


async def test_attempts_in_flight_count_on_every_broker(pair: tuple[Broker, Broker]) -> None:
    a, b = (broker.client.app[SERVICES].limiter for broker in pair)
    client: IPAddress | None = None  # a local caller: one budget like any address
    for _ in range(5):
        await a.begin(client)  # five in flight on a, none finished
    for _ in range(5):
        await b.begin(client)  # and five on b: the budget of ten is taken
    with pytest.raises(RateLimited):
        await a.begin(client)
    with pytest.raises(RateLimited):
        await b.begin(client)
    await a.finish(client, failed=False)  # a success gives its unit back
    await b.begin(client)
    with pytest.raises(RateLimited):
        await a.begin(client)


async def test_two_brokers_sweeping_at_once_record_each_lapse_once(pair: tuple[Broker, Broker]) -> None:
    a, b = pair
    site = await make_site(a, [("SO-1", 8, 365, "one-in-one-out")])
    granted = [await site.acquire(f"E{i}", 1, status=201) for i in range(8)]
    a.clock.advance(3600)
    svc_a, svc_b = a.client.app[SERVICES], b.client.app[SERVICES]
    for _ in range(3):
        await asyncio.gather(reaper.lapse_due(svc_a), reaper.lapse_due(svc_b), reaper.lapse_due(svc_a))
    lapses = await site.events("lease.lapsed")
    assert sorted(e["subject_id"] for e in lapses) == sorted(g["id"] for g in granted)
    assert (await site.pool())["in_use"] == 0


async def test_two_brokers_sample_each_usage_round_once(pair: tuple[Broker, Broker]) -> None:
    a, b = pair
    ests = [await a.estate(f"Estate {n}") for n in range(3)]
    for est in ests:
        await a.purchase(est["id"], "SO-1", 5)
    sampled = await asyncio.gather(*(reaper.sample_usage(x.client.app[SERVICES]) for x in (a, b, a, b)))
    assert sum(sampled) == 3  # each estate once, by whichever broker claimed its round first
    # A point per pool and per licence type of each estate, written once.
    assert a.db.rows("SELECT COUNT(*) FROM usage_points") == [(6,)]
    assert a.db.rows("SELECT COUNT(*) FROM usage_rounds") == [(3,)]
    a.clock.advance(300)
    assert await reaper.sample_usage(b.client.app[SERVICES]) == 3
    assert await reaper.sample_usage(a.client.app[SERVICES]) == 0
