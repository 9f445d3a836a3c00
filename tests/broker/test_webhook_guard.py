"""No server-side request forgery: webhook URLs and the addresses they resolve to."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest

from broker.clock import ManualClock
from broker.webhooks.guard import refusal
from tests.broker.estate_kit import base, estate
from tests.broker.webhook_kit import Receiver, deliver, hook_broker, listening
from tests.conftest import Broker

PUBLIC = "93.184.216.34"  # never connected to: these tests only create, or are refused first


class Names:
    """An injected resolver: names map to the addresses a test chooses; others do not resolve."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return list(self.table[host])


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with listening() as found:
        yield found


REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "0.0.0.0": "unspecified",
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "100.64.0.1": "shared (CGNAT)",
    "192.0.2.1": "private",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fd00::1": "private",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "IPv6 embedding a loopback IPv4 address",
    "::ffff:10.0.0.1": "IPv6 embedding a private IPv4 address",
    "2002:a00:1::": "IPv6 embedding a private IPv4 address",
    "64:ff9b::a9fe:a9fe": "IPv6 embedding a link-local IPv4 address",  # NAT64 to 169.254.169.254
    "2001:db8::1": "private",
}


@pytest.mark.parametrize(("address", "reason"), sorted(REFUSED.items()))
def test_non_public_ranges_are_refused(address: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


async def guarded(
    aiohttp_client: Any, config_factory: Any, clock: ManualClock, operator_token: str, names: Any
) -> Broker:
    return await hook_broker(
        aiohttp_client, config_factory, clock, operator_token, webhook_allow_private=False, webhook_resolve=names
    )


@pytest.mark.parametrize(
    ("url", "table", "says"),
    [
        ("https://127.0.0.1/hook", {}, "loopback"),
        ("https://[::1]:8443/hook", {}, "loopback"),
        ("https://10.0.0.7/hook", {}, "private"),
        ("https://169.254.169.254/latest/meta-data", {}, "link-local"),
        ("https://[fd00::5]/hook", {}, "private"),
        ("https://[::ffff:192.168.0.1]/hook", {}, "IPv4"),
        ("https://internal.test/hook", {"internal.test": ["10.20.30.40"]}, "internal.test resolves to 10.20.30.40"),
        ("https://meta.test/hook", {"meta.test": ["169.254.169.254"]}, "link-local"),
        ("https://v6.test/hook", {"v6.test": ["fd00::1"]}, "private"),
        ("https://mixed.test/hook", {"mixed.test": [PUBLIC, "10.0.0.1"]}, "10.0.0.1"),
        ("https://nowhere.test/hook", {}, "does not resolve"),
        ("http://public.test/hook", {"public.test": [PUBLIC]}, "https://"),
    ],
)
async def test_private_destinations_are_refused_when_the_endpoint_is_made(
    aiohttp_client: Any,
    config_factory: Any,
    clock: ManualClock,
    operator_token: str,
    url: str,
    table: dict[str, list[str]],
    says: str,
) -> None:
    b = await guarded(aiohttp_client, config_factory, clock, operator_token, Names(table))
    est = await estate(b)
    body = await b.call("POST", f"{base(est)}/webhooks", est.admin, {"url": url, "events": ["server.enrolled"]}, 400)
    assert body["code"] == "validation_error" and body["errors"][0]["field"] == "url"
    assert says in body["errors"][0]["message"], body


async def test_localhost_is_refused_by_the_system_resolver(
    aiohttp_client: Any, config_factory: Any, clock: ManualClock, operator_token: str
) -> None:
    b = await hook_broker(aiohttp_client, config_factory, clock, operator_token, webhook_allow_private=False)
    est = await estate(b)
    body = await b.call(
        "POST", f"{base(est)}/webhooks", est.admin, {"url": "https://localhost/hook", "events": ["lease.lapsed"]}, 400
    )
    assert "loopback" in body["detail"]


async def test_a_public_destination_is_accepted(
    aiohttp_client: Any, config_factory: Any, clock: ManualClock, operator_token: str
) -> None:
    names = Names({"hooks.example": [PUBLIC]})
    b = await guarded(aiohttp_client, config_factory, clock, operator_token, names)
    est = await estate(b)
    made = await b.call(
        "POST", f"{base(est)}/webhooks", est.admin, {"url": "https://hooks.example/x", "events": ["lease.lapsed"]}, 201
    )
    assert made["url"] == "https://hooks.example/x" and names.asked == ["hooks.example"]


async def test_a_name_that_later_resolves_to_a_private_address_is_refused_at_delivery(
    aiohttp_client: Any, config_factory: Any, clock: ManualClock, operator_token: str, receiver: Receiver
) -> None:
    """DNS rebinding: public when checked at creation, loopback at delivery time."""
    names = Names({"rebind.test": [PUBLIC]})
    b = await guarded(aiohttp_client, config_factory, clock, operator_token, names)
    est = await estate(b)
    url = f"https://rebind.test:{receiver.port}/hook"
    made = await b.call("POST", f"{base(est)}/webhooks", est.admin, {"url": url, "events": ["lease.lapsed"]}, 201)
    names.table["rebind.test"] = ["127.0.0.1"]
    await b.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(b)
    assert receiver.deliveries == []
    attempt = (await b.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin))["items"][0]
    assert attempt["status_code"] is None and attempt["outcome"] == "retrying"
    assert "rebind.test resolves to 127.0.0.1, which is a loopback address" in attempt["error"]


async def test_an_address_admitted_by_the_setting_is_refused_once_it_is_off(
    aiohttp_client: Any, config_factory: Any, clock: ManualClock, operator_token: str, receiver: Receiver
) -> None:
    """An address literal never reaches a resolver: the delivery checks it itself."""
    first = await hook_broker(aiohttp_client, config_factory, clock, operator_token)  # allowed
    est = await estate(first)
    for url in (f"https://127.0.0.1:{receiver.port}/hook", f"http://127.0.0.1:{receiver.port}/hook"):
        await first.call("POST", f"{base(est)}/webhooks", est.admin, {"url": url, "events": ["lease.lapsed"]}, 201)
    await first.client.close()
    second = await guarded(aiohttp_client, config_factory, clock, operator_token, Names({}))
    hooks = (await second.call("GET", f"{base(est)}/webhooks", est.admin))["items"]
    for hook in hooks:
        await second.call("POST", f"{base(est)}/webhooks/{hook['id']}/test", est.admin, {}, 202)
    await deliver(second)
    assert receiver.deliveries == []
    errors = set()
    for hook in hooks:
        attempt = (await second.call("GET", f"{base(est)}/webhooks/{hook['id']}/deliveries", est.admin))["items"][0]
        errors.add(attempt["error"])
    assert errors == {
        "127.0.0.1 is a loopback address; webhooks go only to public addresses",
        "url: must be an https:// URL",
    }


async def test_a_name_is_connected_to_at_the_address_the_resolver_vetted(
    aiohttp_client: Any, config_factory: Any, clock: ManualClock, operator_token: str, receiver: Receiver
) -> None:
    """With the setting on, a name that resolves to loopback is delivered to, through the
    vetting resolver (the address it returned is the one connected to)."""
    names = Names({"receiver.test": ["127.0.0.1"]})
    b = await hook_broker(aiohttp_client, config_factory, clock, operator_token, webhook_resolve=names)
    est = await estate(b)
    url = f"http://receiver.test:{receiver.port}/hook"
    made = await b.call("POST", f"{base(est)}/webhooks", est.admin, {"url": url, "events": ["lease.lapsed"]}, 201)
    receiver.secrets.append(made["secret"])
    await b.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(b)
    assert [d.payload["type"] for d in receiver.deliveries] == ["webhook.test"] and receiver.unverified == []
    assert receiver.deliveries[0].headers["host"] == f"receiver.test:{receiver.port}"
    assert names.asked == ["receiver.test", "receiver.test"]  # at creation, and again at delivery
