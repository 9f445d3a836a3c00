"""The redemption budgets against many attacking addresses: throttled, never a lockout."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from shared.durations import about
from tests.conftest import Broker


async def _redeem(broker: Broker, code: str, forwarded: str) -> tuple[int, Any, Any]:
    resp = await broker.client.post(
        "/v1/enroll", json={"code": code, "name": "host-1"}, headers={"X-Forwarded-For": forwarded}
    )
    return resp.status, await resp.json(), resp.headers


async def _code(broker: Broker) -> str:
    est = await broker.estate()
    await broker.purchase(est["id"], quantity=4)
    made = await broker.call(
        "POST", f"/v1/estates/{est['id']}/pools/{est['default_pool_id']}/auth-codes", est["admin_token"], {}, 201
    )
    code: str = made["code"]
    return code


def test_waits_are_said_as_people_say_them_the_same_by_broker_and_agent() -> None:
    # One wording for a wait (shared/durations.py): the broker's 429 and the agent's line.
    assert about(894) == "about 15 minutes"
    assert about(1) == "about 1 second"
    assert about(75) == "about 1 minute"
    assert about(3 * 3600) == "about 3 hours"


async def test_the_wait_is_said_in_minutes_and_the_header_in_seconds(broker: Broker) -> None:
    for _ in range(10):
        assert (await _redeem(broker, "00000000", ""))[0] == 403
    broker.clock.advance(6)
    status, body, headers = await _redeem(broker, "00000000", "")
    assert status == 429 and headers["Retry-After"] == "894"
    assert "about 15 minutes" in body["detail"] and "894" not in body["detail"]


async def test_many_attacking_addresses_are_throttled_and_a_technician_still_enrols(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    """20 networks x 10 addresses, each guessing 3 times: 600 guesses in one window.

    With a global alarm of 50, the broker checks at most 50 guesses plus one per network
    (70), refuses the rest with 429, and a technician on another network enrols at once.
    """
    cfg = config_factory(redeem_failures_global=50, trusted_proxies="127.0.0.1/32")
    broker = Broker(await aiohttp_client(create_app(cfg)), operator_token, clock)
    code = await _code(broker)
    outcome: Counter[int] = Counter()
    for guess in range(3):
        for net in range(20):
            for host in range(10):
                status, _, _ = await _redeem(broker, f"{guess:04d}{net:02d}{host:02d}", f"10.{net}.0.{host}")
                outcome[status] += 1
    assert outcome[403] <= 50 + 20 and outcome[403] + outcome[429] == 600, outcome
    status, body, _ = await _redeem(broker, code, "192.0.2.10")
    assert status == 201, body
    # The next window: the attackers' networks may try again, one guess each, no more.
    clock.advance(901)
    outcome.clear()
    for net in range(20):
        for host in range(10):
            outcome[(await _redeem(broker, "99999999", f"10.{net}.0.{host}"))[0]] += 1
    assert outcome[403] <= 50 + 20, outcome
