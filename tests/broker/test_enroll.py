"""Redeeming an 8-digit code: formats, single use under a race, and the failure budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from tests.broker.leasing import ONE, make_site
from tests.conftest import Broker


async def _setup(broker: Broker) -> tuple[str, str, str]:
    est = await broker.estate()
    await broker.purchase(est["id"], quantity=4)
    return est["id"], est["admin_token"], est["default_pool_id"]


async def _code(broker: Broker, estate_id: str, admin: str, pool_id: str, **body: Any) -> str:
    made = await broker.call("POST", f"/v1/estates/{estate_id}/pools/{pool_id}/auth-codes", admin, body, 201)
    code: str = made["code"]
    return code


async def _redeem(
    broker: Broker, code: str, name: str = "host-1", headers: dict[str, str] | None = None, **extra: Any
) -> tuple[int, Any, Any]:
    resp = await broker.client.post("/v1/enroll", json={"code": code, "name": name, **extra}, headers=headers or {})
    return resp.status, await resp.json(), resp.headers


@pytest.mark.parametrize("shape", ["{a}{b}", "{a} {b}", "{a}-{b}"])
async def test_code_as_printed_or_as_typed(broker: Broker, shape: str) -> None:
    estate_id, admin, pool_id = await _setup(broker)
    code = await _code(broker, estate_id, admin, pool_id)
    assert len(code) == 8 and code.isdigit()
    status, body, _ = await _redeem(broker, shape.format(a=code[:4], b=code[4:]))
    assert status == 201, body
    assert body["pool_id"] == pool_id and body["estate_id"] == estate_id
    assert body["kind"] == "server" and body["name"] == "host-1"
    assert body["estate_name"] == "Acme Broadcast" and body["pool_name"] == "Default Pool"
    assert body["server_token"].startswith("tnr_srv_")
    me = await broker.call("GET", "/v1/me", body["server_token"], status=200)
    assert me == {
        "kind": "server",
        "server_id": body["server_id"],
        "name": "host-1",
        "estate_id": estate_id,
        "pool_id": pool_id,
    }


async def test_a_domain_binding(broker: Broker) -> None:
    estate_id, admin, pool_id = await _setup(broker)
    code = await _code(broker, estate_id, admin, pool_id)
    status, body, _ = await _redeem(broker, code, name="tenant-a", kind="domain")
    assert status == 201 and body["kind"] == "domain"
    servers = await broker.call("GET", f"/v1/estates/{estate_id}/servers", admin, status=200)
    assert [(s["name"], s["kind"]) for s in servers["items"]] == [("tenant-a", "domain")]
    lease = await broker.call(
        "POST", "/v1/leases", body["server_token"], {"encoder": "E1", "licence_type": ONE, "count": 2}, 201
    )
    assert lease["pool_id"] == pool_id


async def test_the_enrolment_carries_the_published_keys(broker: Broker) -> None:
    estate_id, admin, pool_id = await _setup(broker)
    status, body, _ = await _redeem(broker, await _code(broker, estate_id, admin, pool_id))
    assert status == 201
    published = await broker.call("GET", "/v1/keys", status=200)
    assert body["keys"] == published
    assert published["keys"] and all(k["kty"] == "OKP" and k["crv"] == "Ed25519" for k in published["keys"])


@pytest.mark.parametrize("code", ["1234567", "123456789", "abcdefgh", "1234 567x", "", "48 21 39 07 1"])
async def test_malformed_codes_are_invalid(broker: Broker, code: str) -> None:
    await _setup(broker)
    status, body, _ = await _redeem(broker, code)
    if code == "":
        assert status == 400 and body["code"] == "validation_error"
        return
    assert status == 403 and body["code"] == "auth_code_invalid"


async def test_used_expired_revoked_and_unknown_codes_get_one_answer(broker: Broker) -> None:
    estate_id, admin, pool_id = await _setup(broker)
    used = await _code(broker, estate_id, admin, pool_id)
    assert (await _redeem(broker, used))[0] == 201
    expired = await _code(broker, estate_id, admin, pool_id, ttl_seconds=60)
    revoked = await _code(broker, estate_id, admin, pool_id)
    live = await broker.call("GET", f"/v1/estates/{estate_id}/auth-codes", admin, status=200)
    # The list never shows digits: the code to revoke is the longer-lived one.
    other = max(live["items"], key=lambda c: c["expires_at"])
    await broker.call("DELETE", f"/v1/estates/{estate_id}/auth-codes/{other['id']}", admin, status=204)
    broker.clock.advance(61)
    unknown = next(f"{n:08d}" for n in range(10**8) if f"{n:08d}" not in (used, expired, revoked))
    details = set()
    for code in (used, expired, revoked, unknown):
        status, body, _ = await _redeem(broker, code, name="late")
        assert status == 403, (code, body)
        assert body["code"] == "auth_code_invalid"
        details.add(body["detail"])
    assert len(details) == 1  # nothing tells a guesser which case it hit
    assert "Ask your admin for a new code" in details.pop()
    servers = await broker.call("GET", f"/v1/estates/{estate_id}/servers", admin, status=200)
    assert [s["name"] for s in servers["items"]] == ["host-1"]


async def test_two_hosts_racing_for_one_code_exactly_one_wins(broker: Broker) -> None:
    estate_id, admin, pool_id = await _setup(broker)
    code = await _code(broker, estate_id, admin, pool_id)
    results = await asyncio.gather(*(_redeem(broker, code, name=f"host-{i}") for i in range(8)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [201] + [403] * 7
    servers = await broker.call("GET", f"/v1/estates/{estate_id}/servers", admin, status=200)
    assert len(servers["items"]) == 1
    events = await broker.call("GET", f"/v1/estates/{estate_id}/events?action=server.enrolled", admin, status=200)
    assert len(events["items"]) == 1


async def test_a_success_before_the_limit_is_not_blocked(broker: Broker) -> None:
    estate_id, admin, pool_id = await _setup(broker)
    for _ in range(9):
        assert (await _redeem(broker, "00000000"))[0] == 403
    code = await _code(broker, estate_id, admin, pool_id)
    assert (await _redeem(broker, code))[0] == 201


async def test_ten_failures_from_one_address_then_429(broker: Broker) -> None:
    estate_id, admin, pool_id = await _setup(broker)
    code = await _code(broker, estate_id, admin, pool_id)
    for _ in range(10):
        assert (await _redeem(broker, "00000000"))[0] == 403
    broker.clock.advance(100)
    status, body, headers = await _redeem(broker, code)  # even a good code waits
    assert status == 429 and body["code"] == "rate_limited"
    retry_after = int(headers["Retry-After"])
    assert retry_after == 900 - 100
    assert body["retry_after"] == retry_after
    broker.clock.advance(retry_after)
    status, body, _ = await _redeem(broker, code)
    assert status == 201, body


async def test_the_global_failure_budget_throttles_networks_without_locking_out(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    cfg = config_factory(redeem_failures_global=5, trusted_proxies="127.0.0.1/32")
    broker = Broker(await aiohttp_client(create_app(cfg)), operator_token, clock)
    estate_id, admin, pool_id = await _setup(broker)
    code = await _code(broker, estate_id, admin, pool_id)
    for i in range(5):
        status, _, _ = await _redeem(broker, "00000000", headers={"X-Forwarded-For": f"10.0.{i}.1"})
        assert status == 403
    # Under attack, a network that has just failed waits, even from a fresh address in it...
    status, body, headers = await _redeem(broker, "00000000", headers={"X-Forwarded-For": "10.0.0.200"})
    assert status == 429 and body["code"] == "rate_limited"
    assert 0 < int(headers["Retry-After"]) <= 900
    # ...but a technician elsewhere still enrols: the global budget is no fleet-wide lockout.
    status, body, _ = await _redeem(broker, code, headers={"X-Forwarded-For": "10.9.9.9"})
    assert status == 201, body
    clock.advance(901)
    status, _, _ = await _redeem(broker, "00000000", headers={"X-Forwarded-For": "10.0.0.200"})
    assert status == 403


async def test_forwarded_for_is_ignored_unless_trusted(broker: Broker) -> None:
    await _setup(broker)
    for i in range(10):
        await _redeem(broker, "00000000", headers={"X-Forwarded-For": f"10.0.0.{i}"})
    status, _, _ = await _redeem(broker, "00000000", headers={"X-Forwarded-For": "10.0.1.1"})
    assert status == 429  # a spoofed header does not buy fresh budget


async def test_enrolled_server_draws_from_its_pool(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 3, 365, ONE)], move={"SO-1": 1})
    lease = await site.acquire("E1", 1, status=201)
    assert lease["pool_id"] == site.pool_id


async def test_a_burst_of_guesses_cannot_outrun_the_limit(broker: Broker) -> None:
    await _setup(broker)
    results = await asyncio.gather(*(_redeem(broker, f"{n:08d}") for n in range(40)))
    statuses = [r[0] for r in results]
    assert statuses.count(403) <= 10, statuses
    assert statuses.count(429) == 40 - statuses.count(403)
