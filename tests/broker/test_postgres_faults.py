"""PostgreSQL faults, seen over HTTP by a real broker app (docs/design.md, Storage, "Faults").

The broker reaches PostgreSQL through a TCP forwarder (``tests/tcpproxy.py``), so that
a test can make the database unreachable (connections refused, open ones dropped),
restart it (dropped, refused for a moment, back), or kill every connection on the server
itself (``pg_terminate_backend``). While a fault lasts every request that needs the
database is answered ``503 storage_unavailable`` as problem+json (never a 500), nothing
changes in the database, and ``/healthz`` is 503; once it ends the broker recovers by
itself within seconds, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.cli import check_books
from broker.clock import ManualClock
from broker.config import Config, load
from tests.broker.leasing import ONE, Site, make_site
from tests.conftest import Broker
from tests.postgres import TEST_SECRET_KEY, PostgresServer
from tests.tcpproxy import Blackhole, TcpProxy

pytestmark = pytest.mark.slow

METRICS = "tnr_met_" + "m" * 32  # a Prometheus scrape needs the database too
# How long a request waits for a connection before 503 (database_timeout_seconds).
WAIT = 0.5
# A request not answered within this many seconds is hung (on a connection nobody answers).
HUNG = 10.0
# How soon after a fault ends the broker must answer again (measured: docs/design.md).
RECOVERY = 3.0
# An outage longer than psycopg_pool's reconnection backoff would let pass unnoticed
# (its attempts come 1, 2, 4, 8 s apart unless the store bounds them).
LONG_OUTAGE = 8.0


@pytest.fixture
def proxy(pg_database: str) -> Iterator[TcpProxy]:
    made = TcpProxy.before(pg_database)
    try:
        yield made
    finally:
        made.close()


def _config(data_dir: Path, url: str, operator_token: str, clock: ManualClock) -> Config:
    return load(
        None,
        env={},
        data_dir=data_dir,
        operator_token=operator_token,
        clock=clock,
        database=url,
        secret_key=TEST_SECRET_KEY,
        database_pool_size=4,
        database_timeout_seconds=WAIT,
        metrics_token=METRICS,
    )


@pytest.fixture
async def broker(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    tmp_path: Path,
    pg_database: str,
    proxy: TcpProxy,
    clock: ManualClock,
    operator_token: str,
) -> AsyncIterator[Broker]:
    """A broker whose every database connection goes through ``proxy``."""
    client = await aiohttp_client(create_app(_config(tmp_path / "data", proxy.url(pg_database), operator_token, clock)))
    yield Broker(client, operator_token, clock)


def everything(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the broker's schema, read directly (not through the proxy)."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            str(row[0])
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
        ]
        return {t: sorted((tuple(r) for r in conn.execute(f'SELECT * FROM "{t}"')), key=repr) for t in sorted(tables)}


async def books_hold(url: str, tmp_path: Path, clock: ManualClock) -> None:
    """``tenure-broker check``'s verdict on the database, through a store of its own."""
    cfg = load(None, env={}, data_dir=tmp_path / "check", clock=clock, database=url, secret_key=TEST_SECRET_KEY)
    report = await check_books(cfg)
    assert report.findings == []


async def answer(broker: Broker, method: str, path: str, token: str | None = None, json: Any = None) -> Any:
    """(status, content type, body) of one request (which must be answered within HUNG s)."""
    headers = broker.auth(token) if token else {}
    try:
        resp = await asyncio.wait_for(broker.client.request(method, path, json=json, headers=headers), HUNG)
    except TimeoutError:
        raise AssertionError(f"{method} {path}: no answer in {HUNG} s") from None
    broker.client.session.cookie_jar.clear()  # a console session signed in is not used after
    if resp.status == 204 or resp.content_type == "text/plain":
        return resp.status, resp.content_type, None
    body = await resp.json(content_type=None)
    return resp.status, resp.content_type, body


async def stocked(broker: Broker) -> tuple[Site, dict[str, Any], str]:
    """A site with a lease of 2 seats, and a code not yet redeemed."""
    site = await make_site(broker, [("SO-1", 10, 365, ONE)])
    lease = await site.acquire("ENC-1", 2, status=201)
    code = await broker.call(
        "POST", f"/v1/estates/{site.estate_id}/pools/{site.pool_id}/auth-codes", site.admin, {}, 201
    )
    return site, lease, str(code["code"])


def attempts(broker: Broker, site: Site, lease: dict[str, Any], code: str) -> list[tuple[str, str, str | None, Any]]:
    """One request of each kind the fault must refuse: writes of every principal, and reads."""
    est = f"/v1/estates/{site.estate_id}"
    return [
        ("POST", "/v1/leases", site.server, {"encoder": "ENC-2", "licence_type": ONE, "count": 1}),
        ("POST", "/v1/leases", site.server, {"encoder": "ENC-1", "licence_type": ONE, "count": 3}),
        ("POST", f"/v1/leases/{lease['id']}/renew", site.server, {}),
        ("DELETE", f"/v1/leases/{lease['id']}", site.server, None),
        ("POST", f"{est}/pools", site.admin, {"name": "During the fault"}),
        ("POST", f"{est}/pools/{site.pool_id}/auth-codes", site.admin, {}),
        (
            "POST",
            f"{est}/purchases",
            broker.operator,
            {"sales_order": "SO-2", "licence_type": ONE, "quantity": 3, "expires_at": "2030-01-01T00:00:00Z"},
        ),
        ("POST", "/v1/enroll", None, {"code": code, "name": "host-9"}),
        ("POST", "/console/session", None, {"token": site.admin}),
        ("GET", f"{est}/pools", site.admin, None),
        ("GET", f"{est}/leases", site.admin, None),
        ("GET", "/metrics", METRICS, None),
        ("GET", "/healthz", None, None),
    ]


async def refused_with_nothing_changed(
    broker: Broker, site: Site, lease: dict[str, Any], code: str, before: dict[str, Any], direct: str
) -> None:
    for method, path, token, body in attempts(broker, site, lease, code):
        status, ctype, problem = await answer(broker, method, path, token, body)
        assert (status, ctype) == (503, "application/problem+json"), (method, path, status, problem)
        assert problem["code"] == "storage_unavailable", (method, path, problem)
    assert everything(direct) == before


async def recovers(broker: Broker, started: float) -> float:
    """Seconds from ``started`` until ``/healthz`` is 200 again; 503s meanwhile, never a 500."""
    while True:
        status, _, body = await answer(broker, "GET", "/healthz")
        if status == 200:
            return time.monotonic() - started
        assert status == 503 and body["code"] == "storage_unavailable", (status, body)
        assert time.monotonic() - started < RECOVERY, "the broker did not recover by itself"
        await asyncio.sleep(0.05)


async def serves_again(broker: Broker, site: Site, lease: dict[str, Any], code: str) -> None:
    """Every kind of request refused during the fault is answered after it, on the same broker."""
    for method, path, token, body in attempts(broker, site, lease, code):
        status, _, answered = await answer(broker, method, path, token, body)
        assert status in (200, 201, 204), (method, path, status, answered)


async def test_an_unreachable_database_is_503_with_nothing_changed_and_recovery_by_itself(
    broker: Broker, proxy: TcpProxy, pg_database: str, tmp_path: Path, clock: ManualClock
) -> None:
    site, lease, code = await stocked(broker)
    before = everything(pg_database)
    proxy.refuse()  # connections refused, the open ones dropped
    started = time.monotonic()
    await refused_with_nothing_changed(broker, site, lease, code, before, pg_database)
    # A long outage: the pool's reconnection attempts have backed off by the time it ends.
    while time.monotonic() - started < LONG_OUTAGE:
        status, _, _ = await answer(broker, "GET", "/healthz")
        assert status == 503
        await asyncio.sleep(0.5)
    assert everything(pg_database) == before
    proxy.restore()
    took = await recovers(broker, time.monotonic())
    print(f"\nunreachable for {LONG_OUTAGE:.0f} s: serving again {took:.2f} s after it came back")
    await serves_again(broker, site, lease, code)
    await books_hold(pg_database, tmp_path, clock)


async def test_a_vanished_database_host_is_503_not_a_hang(
    broker: Broker, proxy: TcpProxy, pg_database: str, tmp_path: Path, clock: ManualClock
) -> None:
    why = Blackhole.unavailable()
    if why is not None:
        pytest.skip(why)
    site, lease, code = await stocked(broker)
    before = everything(pg_database)
    # Nothing comes back from the host, not even a reset: the broker's pooled connections
    # are open to nobody, and what it sends on them is never acknowledged.
    with Blackhole(proxy.port):
        started = time.monotonic()
        await refused_with_nothing_changed(broker, site, lease, code, before, pg_database)
        took = time.monotonic() - started
    recovered = await recovers(broker, time.monotonic())
    print(
        f"\nhost vanished: {len(attempts(broker, site, lease, code))} requests refused in {took:.1f} s; "
        f"serving again {recovered:.2f} s after it came back"
    )
    await serves_again(broker, site, lease, code)
    await books_hold(pg_database, tmp_path, clock)


async def test_a_database_restart_is_503_with_nothing_changed_and_recovery_by_itself(
    broker: Broker,
    proxy: TcpProxy,
    postgres_server: PostgresServer,
    pg_database: str,
    tmp_path: Path,
    clock: ManualClock,
) -> None:
    site, lease, code = await stocked(broker)
    before = everything(pg_database)
    # The server shuts down: new connections are refused, and each open one is ended by
    # its backend ("terminating connection due to administrator command") ...
    proxy.refuse(cut=False)
    assert postgres_server.terminate(pg_database) >= 1
    await refused_with_nothing_changed(broker, site, lease, code, before, pg_database)
    proxy.restore()  # ... and it is back
    took = await recovers(broker, time.monotonic())
    print(f"\nrestart: serving again {took:.2f} s after the database came back")
    await serves_again(broker, site, lease, code)
    await books_hold(pg_database, tmp_path, clock)


async def test_connections_cut_under_the_broker_are_replaced_unnoticed(
    broker: Broker, proxy: TcpProxy, pg_database: str, tmp_path: Path, clock: ManualClock
) -> None:
    site, lease, code = await stocked(broker)
    for _ in range(3):
        assert proxy.cut() >= 1  # every pooled connection dies; the server stays up
        # A read and a write, each on a dead connection first: run again on a new one.
        await site.pool()
        lease = await site.renew(lease["id"], status=200)
    status, _, _ = await answer(broker, "GET", "/healthz")
    assert status == 200
    await serves_again(broker, site, lease, code)
    await books_hold(pg_database, tmp_path, clock)


@pytest.mark.parametrize("fault", ["connections killed", "restart"])
async def test_a_fault_under_load_is_never_a_500_and_loses_no_acknowledged_lease(
    fault: str,
    broker: Broker,
    proxy: TcpProxy,
    postgres_server: PostgresServer,
    pg_database: str,
    tmp_path: Path,
    clock: ManualClock,
) -> None:
    site = await make_site(broker, [("SO-1", 12, 365, ONE)])
    acked: dict[str, dict[str, Any]] = {}
    unknown: dict[str, int] = {}  # the count asked for by a change whose answer was 503
    seen: dict[int, int] = {}
    stop = asyncio.Event()
    enough = asyncio.Event()  # more than 20 granted or renewed

    async def encoder(name: str) -> None:
        count = 0
        while not stop.is_set():
            count = count % 3 + 1
            status, _, body = await answer(
                broker, "POST", "/v1/leases", site.server, {"encoder": name, "licence_type": ONE, "count": count}
            )
            seen[status] = seen.get(status, 0) + 1
            assert status in (200, 201, 503), (status, body)
            if status == 503:
                assert body["code"] == "storage_unavailable", body
                unknown[name] = count  # refused, or lost while committing: either outcome
            else:
                acked[name] = body
                unknown.pop(name, None)
                if seen.get(200, 0) + seen.get(201, 0) > 20:
                    enough.set()

    workers = [asyncio.create_task(encoder(f"ENC-{i}")) for i in range(4)]
    killed = 0
    try:
        for _ in range(5 if fault == "connections killed" else 2):
            await asyncio.sleep(0.3)
            if fault == "restart":
                proxy.refuse(cut=False)
            killed += postgres_server.terminate(pg_database)
            if fault == "restart":
                await asyncio.sleep(1.0)
                proxy.restore()
    finally:
        await asyncio.sleep(0.3)
        # The load goes on until it has been real (more than 20 granted or renewed), for
        # at most 10 s more: a slow machine answers fewer in the fixed time above.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), 10)
        stop.set()
        await asyncio.gather(*workers)
    assert killed >= 2 and seen.get(200, 0) + seen.get(201, 0) > 20, (killed, seen)
    took = await recovers(broker, time.monotonic())
    with psycopg.connect(pg_database, autocommit=True) as conn:
        rows = {
            r[0]: (r[1], r[2]) for r in conn.execute("SELECT encoder, id, count FROM leases WHERE state = 'active'")
        }
    for name, body in acked.items():
        allowed = {(body["id"], body["count"]), (body["id"], unknown.get(name, body["count"]))}
        assert rows.get(name) in allowed, (name, body, unknown.get(name), rows.get(name))
    print(f"\n{fault} under load ({killed} connections killed): answers {seen}; healthy after {took:.2f} s")
    await books_hold(pg_database, tmp_path, clock)
