"""``GET /v1/stream`` across real ``tenure-broker serve`` processes on one PostgreSQL database:
an admin on one replica reaches a stream held on another within 2 s, also after the
listener's connection was cut; and SIGTERM with streams open exits promptly and cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from broker import workers
from broker.config import Config
from broker.ids import new_token
from tests.broker.fleet import Replica, call
from tests.broker.sse import SseReader
from tests.postgres import PostgresServer

pytestmark = pytest.mark.slow

ONE = "one-in-one-out"


@dataclass
class Site:
    replicas: list[Replica]
    database: str
    estate: dict[str, Any]
    server: dict[str, Any]

    def acquire(self, encoder: str, via: int = 0) -> str:
        status, lease = call(
            f"{self.replicas[via].url}/v1/leases",
            "POST",
            self.server["server_token"],
            {"encoder": encoder, "licence_type": ONE, "count": 1},
        )
        assert status == 201, lease
        return str(lease["id"])

    def revoke(self, lease_id: str, via: int) -> None:
        path = f"/v1/estates/{self.estate['id']}/leases/{lease_id}"
        status, body = call(f"{self.replicas[via].url}{path}", "DELETE", self.estate["admin_token"])
        assert status == 204, body


@pytest.fixture
def site(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[Site]:
    database = postgres_server.create()
    operator = new_token("op")
    # The slow poll is out of the way: only LISTEN/NOTIFY carries an event within seconds.
    replicas = [
        Replica(name, tmp_path, database, operator, database_pool_size=3, stream_poll_seconds=300).start()
        for name in ("r1", "r2")
    ]
    try:
        for r in replicas:
            r.ready()
        url = replicas[0].url
        status, est = call(f"{url}/v1/estates", "POST", operator, {"name": "Streams", "admin_name": "Al"})
        assert status == 201, est
        bought = {"sales_order": "SO-1", "licence_type": ONE, "quantity": 5, "expires_at": "2099-01-01T00:00:00Z"}
        status, _ = call(f"{url}/v1/estates/{est['id']}/purchases", "POST", operator, bought)
        assert status == 201
        pool = f"{url}/v1/estates/{est['id']}/pools/{est['default_pool_id']}"
        status, _ = call(pool, "PATCH", est["admin_token"], {"lease_seconds": 3600})
        assert status == 200
        status, code = call(f"{pool}/auth-codes", "POST", est["admin_token"], {})
        assert status == 201
        status, server = call(f"{url}/v1/enroll", "POST", None, {"code": code["code"], "name": "h"})
        assert status == 201, server
        yield Site(replicas, database, est, server)
    finally:
        for r in replicas:
            r.stop()
        postgres_server.drop(database)


@contextlib.asynccontextmanager
async def stream(replica: Replica, token: str) -> AsyncIterator[SseReader]:
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{replica.url}/v1/stream", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        try:
            reader = SseReader(resp)
            assert (await reader.event()).event == "ready"
            yield reader
        finally:
            resp.close()


async def test_an_admin_on_one_replica_reaches_a_stream_on_another_even_after_the_listener_was_cut(
    site: Site,
) -> None:
    first, second = site.acquire("ENC-1"), site.acquire("ENC-2")
    async with stream(site.replicas[0], site.server["server_token"]) as reader:
        began = time.monotonic()
        site.revoke(first, via=1)
        got = await reader.event(within=2.0)
        assert time.monotonic() - began < 2.0
        assert got.event == "lease.revoked" and got.payload["data"]["lease_id"] == first

        # The database drops every listening connection (a failover, an admin's
        # pg_terminate_backend): each replica listens again within a second or so.
        with psycopg.connect(site.database, autocommit=True) as conn:
            cut = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN tenure_stream%'"
            ).fetchall()
        assert len(cut) == 2 * workers.count(Config()), cut  # one listener per worker of each replica
        await asyncio.sleep(1.5)  # the listener's first pause is at most 0.5 s
        began = time.monotonic()
        site.revoke(second, via=1)
        got = await reader.event(within=2.0)
        assert time.monotonic() - began < 2.0
        assert got.event == "lease.revoked" and got.payload["data"]["lease_id"] == second


async def test_sigterm_with_streams_open_exits_at_once_and_cleanly(site: Site) -> None:
    replica = site.replicas[0]
    async with stream(replica, site.server["server_token"]) as one, stream(replica, site.server["server_token"]) as two:
        assert replica.proc is not None
        began = time.monotonic()
        replica.proc.terminate()
        for reader in (one, two):
            assert await reader.frame(within=5.0) is None  # ended by the broker, not cut
        status = replica.proc.wait(10)
        took = time.monotonic() - began
    assert status == 0, replica.log_path.read_text()[-2000:]
    assert took < 3.0, took  # aiohttp would wait up to its 10 s shutdown timeout for open handlers
