"""The client's address behind reverse proxies: only trusted proxies are believed."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.api.client import forwarded_client, parse_ip
from broker.app import create_app
from broker.clock import ManualClock
from broker.config import ConfigError, load
from broker.ratelimit import address_key
from tests.conftest import Broker

PROXIES = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.1.0.0/16"))
PEER = ipaddress.ip_address("127.0.0.1")


def walk(*entries: str) -> str:
    return str(forwarded_client(PEER, [", ".join(entries)], PROXIES))


def test_the_rightmost_address_that_is_no_trusted_proxy_is_the_client() -> None:
    assert walk("203.0.113.9") == "203.0.113.9"
    # Whatever the client wrote itself (left of what the proxies added) is never read.
    assert walk("6.6.6.6", "203.0.113.9") == "203.0.113.9"
    assert walk("6.6.6.6", "203.0.113.9", "10.1.2.3") == "203.0.113.9"
    # Every hop a trusted proxy: the farthest one is all that is known.
    assert walk("10.1.0.7", "10.1.2.3") == "10.1.0.7"
    assert walk() == "127.0.0.1"


def test_garbage_stops_the_walk_at_what_a_trusted_proxy_reported() -> None:
    assert walk("203.0.113.9", "not-an-ip") == "127.0.0.1"
    assert walk("6.6.6.6", "bogus", "10.1.2.3") == "10.1.2.3"
    assert walk("6.6.6.6", "", "10.1.2.3") == "10.1.2.3"
    assert walk("203.0.113.9:4711") == "127.0.0.1"  # a port is no address: no guessing


def test_ipv4_mapped_and_bracketed_addresses() -> None:
    assert parse_ip("::ffff:203.0.113.9") == ipaddress.ip_address("203.0.113.9")
    assert parse_ip("[2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
    assert walk("::ffff:10.1.0.9", "::ffff:203.0.113.9") == "203.0.113.9"


def test_ipv6_clients_count_per_64() -> None:
    a, b = ipaddress.ip_address("2001:db8:1:2::1"), ipaddress.ip_address("2001:db8:1:2:ffff::9")
    assert address_key(a) == address_key(b) == "2001:db8:1:2::/64"
    assert address_key(ipaddress.ip_address("2001:db8:1:3::1")) != address_key(a)
    assert address_key(ipaddress.ip_address("203.0.113.9")) == "203.0.113.9"


def test_trusted_proxies_from_the_environment_and_bad_cidrs() -> None:
    cfg = load(None, env={"TENURE_TRUSTED_PROXIES": "127.0.0.1/32,::1/128"})
    assert [str(n) for n in cfg.trusted_proxies] == ["127.0.0.1/32", "::1/128"]
    assert load(None, env={}).trusted_proxies == ()
    with pytest.raises(ConfigError, match="'trusted_proxies'"):
        load(None, env={"TENURE_TRUSTED_PROXIES": "127.0.0.1/32,localhost"})
    with pytest.raises(ConfigError, match="trusted_proxies") as caught:
        load(None, env={"TENURE_TRUST_FORWARDED_FOR": "true"})
    assert "'trust_forwarded_for'" in str(caught.value)


async def _broker(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    trusted: str,
) -> Broker:
    return Broker(await aiohttp_client(create_app(config_factory(trusted_proxies=trusted))), operator_token, clock)


async def _redeem(broker: Broker, code: str, forwarded: str) -> int:
    resp = await broker.client.post(
        "/v1/enroll", json={"code": code, "name": "host-1"}, headers={"X-Forwarded-For": forwarded}
    )
    return resp.status


async def _code(broker: Broker) -> str:
    est = await broker.estate()
    await broker.purchase(est["id"], quantity=4)
    made = await broker.call(
        "POST", f"/v1/estates/{est['id']}/pools/{est['default_pool_id']}/auth-codes", est["admin_token"], {}, 201
    )
    code: str = made["code"]
    return code


@pytest.mark.parametrize("trusted", ["", "10.0.0.0/8", "127.0.0.1/32"])
async def test_a_client_cannot_choose_its_own_rate_limit_address(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    trusted: str,
) -> None:
    """15 wrong codes, each with a new X-Forwarded-For of the client's choosing: limited.

    The test client connects from 127.0.0.1: untrusted, then trusted (as nginx would
    append the real peer, the rightmost entry is the one the proxy saw).
    """
    broker = await _broker(aiohttp_client, config_factory, clock, operator_token, trusted)
    statuses = [await _redeem(broker, "00000000", f"198.51.100.{i}, 203.0.113.5") for i in range(15)]
    assert statuses == [403] * 10 + [429] * 5


async def test_two_technicians_behind_one_trusted_proxy_are_two_addresses(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    broker = await _broker(aiohttp_client, config_factory, clock, operator_token, "127.0.0.1/32")
    code = await _code(broker)
    for _ in range(10):
        assert await _redeem(broker, "00000000", "203.0.113.5") == 403
    assert await _redeem(broker, "00000000", "203.0.113.5") == 429
    assert await _redeem(broker, code, "203.0.113.6") == 201  # the other technician's typos are not hers


async def test_ipv6_addresses_of_one_64_share_a_budget(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    broker = await _broker(aiohttp_client, config_factory, clock, operator_token, "127.0.0.1/32")
    statuses = [await _redeem(broker, "00000000", f"2001:db8:1:2::{i:x}") for i in range(1, 13)]
    assert statuses == [403] * 10 + [429] * 2  # a new address in the same /64 buys nothing
    assert await _redeem(broker, "00000000", "2001:db8:1:3::1") == 403  # the next /64 is another client
