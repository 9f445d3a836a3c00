"""Concurrent acquires over HTTP never grant a seat that is not there (docs/design.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from tests.broker.leasing import ONE, Site, make_site
from tests.conftest import Broker
from tests.dbaccess import Database


def check_books(db: Database) -> dict[tuple[str, str], int]:
    """Invariants 1 and 2 read straight from the database; returns leased per holding."""
    holdings = db.rows("SELECT pool_id, purchase_id, allocated, leased FROM holdings")
    for pool_id, purchase_id, allocated, leased in holdings:
        assert 0 <= leased <= allocated, (pool_id, purchase_id, allocated, leased)
    quantities = dict(db.rows("SELECT id, quantity FROM purchases"))
    allocated_sum: dict[str, int] = {}
    for _, purchase_id, allocated, _ in holdings:
        allocated_sum[purchase_id] = allocated_sum.get(purchase_id, 0) + allocated
    assert allocated_sum == quantities
    # ``leased`` is exactly the seats of the active leases.
    seated = dict(
        ((p, q), n)
        for p, q, n in db.rows(
            "SELECT s.pool_id, s.purchase_id, SUM(s.count) FROM lease_seats s "
            "JOIN leases l ON l.id = s.lease_id WHERE l.state = 'active' "
            "GROUP BY s.pool_id, s.purchase_id"
        )
    )
    books = {(p, q): leased for p, q, _, leased in holdings if leased}
    assert books == seated
    counts = db.rows(
        "SELECT l.id, l.count, SUM(s.count) FROM leases l JOIN lease_seats s "
        "ON s.lease_id = l.id WHERE l.state = 'active' GROUP BY l.id"
    )
    assert all(count == total for _, count, total in counts)
    return books


async def _post(broker: Broker, token: str, encoder: str, count: int) -> int:
    resp = await broker.client.post(
        "/v1/leases", headers=broker.auth(token), json={"encoder": encoder, "licence_type": ONE, "count": count}
    )
    await resp.read()
    return resp.status


async def _site(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> tuple[Broker, Site, Database]:
    config = config_factory()
    broker = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    # 50 seats in Paris from three purchases; more of the same purchases stay in Default.
    site = await make_site(
        broker,
        [("SO-A", 30, 100, ONE), ("SO-B", 20, 200, ONE), ("SO-C", 10, 300, ONE)],
        move={"SO-A": 20, "SO-B": 20, "SO-C": 10},
    )
    return broker, site, Database.of(config)


async def test_200_concurrent_acquires_for_50_seats_grant_exactly_50(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    broker, site, db = await _site(aiohttp_client, config_factory, clock, operator_token)
    tokens = [site.server] + [(await site.enrol(f"host-{i}"))["server_token"] for i in range(2, 5)]
    statuses = await asyncio.gather(*(_post(broker, tokens[i % len(tokens)], f"ENC-{i:03d}", 1) for i in range(200)))
    assert statuses.count(201) == 50
    assert statuses.count(409) == 150
    assert set(statuses) == {201, 409}
    view = await site.pool()
    assert view["in_use"] == 50 and view["available"] == 0
    assert {h["sales_order"]: h["in_use"] for h in view["holdings"]} == {"SO-A": 20, "SO-B": 20, "SO-C": 10}
    assert len(await site.leases()) == 50
    books = check_books(db)
    assert sum(n for (pool, _), n in books.items() if pool == site.pool_id) == 50
    assert (await site.pool(site.default_pool_id))["in_use"] == 0


async def test_concurrent_grows_shrinks_and_releases_keep_the_books(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    broker, site, db = await _site(aiohttp_client, config_factory, clock, operator_token)
    other = (await site.enrol("host-2"))["server_token"]
    # Forty encoders, each asked for several counts at once (including 0 = release).
    jobs = []
    for i in range(40):
        token = site.server if i % 2 else other
        for count in (3, 0, 5, 1):
            jobs.append(_post(broker, token, f"ENC-{i:02d}", count))
    statuses = await asyncio.gather(*jobs)
    assert set(statuses) <= {200, 201, 204, 409}
    view = await site.pool()
    held = sum(x["count"] for x in await site.leases())
    assert view["in_use"] == held <= 50
    check_books(db)


async def test_the_same_request_raced_makes_one_lease(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    broker, site, db = await _site(aiohttp_client, config_factory, clock, operator_token)
    statuses = await asyncio.gather(*(_post(broker, site.server, "ENC-1", 4) for _ in range(20)))
    assert sorted(statuses) == [200] * 19 + [201], sorted(statuses)
    leases = await site.leases()
    assert len(leases) == 1 and leases[0]["count"] == 4
    assert (await site.pool())["in_use"] == 4
    check_books(db)
