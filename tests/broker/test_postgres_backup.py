"""The PostgreSQL backup recipe of docs/operations.md, run as written: pg_dump of a serving
broker's database, pg_restore into a new one, and a broker on the copy serving the same
books, tokens and keys."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from broker.config import load
from shared import jws
from tests.broker.estate_kit import base, enroll, estate, lease
from tests.broker.test_check import check
from tests.conftest import Broker
from tests.dbaccess import Database
from tests.postgres import TEST_SECRET_KEY, PostgresServer


@pytest.fixture
def two_databases(postgres_server: PostgresServer) -> Iterator[tuple[str, str]]:
    source, target = postgres_server.create_empty(), postgres_server.create_empty()
    try:
        yield source, target
    finally:
        postgres_server.drop(source)
        postgres_server.drop(target)


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_pg_dump_and_pg_restore_give_a_database_that_serves_the_same_books(
    two_databases: tuple[str, str],
    clock: ManualClock,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    operator_token: str,
    tmp_path: Path,
) -> None:
    source, target = two_databases

    def config_for(database: str, data_dir: Path) -> Any:
        return load(
            None,
            env={},
            data_dir=data_dir,
            database=database,
            secret_key=TEST_SECRET_KEY,
            operator_token=operator_token,
            clock=clock,
        )

    config = config_for(source, tmp_path / "first")
    broker = Broker(await aiohttp_client(create_app(config)), operator_token, config.clock)
    est = await estate(broker)
    await broker.purchase(est.id, quantity=10)
    server = await enroll(broker, est, est.default_pool)
    first = await lease(broker, server["server_token"], "ENC-1", 3)
    code = await broker.call("POST", f"{base(est)}/pools/{est.default_pool}/auth-codes", est.admin, {}, 201)
    keys = await broker.call("GET", "/v1/keys", status=200)

    dump = tmp_path / "tenure.dump"
    # While the broker serves: the recipe's commands, as written (the target made empty).
    await asyncio.to_thread(_run, "pg_dump", "--format=custom", f"--file={dump}", source)
    await asyncio.to_thread(_run, "pg_restore", "--no-owner", "--exit-on-error", f"--dbname={target}", str(dump))
    assert Database(target, tmp_path).rows("SELECT COUNT(*) FROM events") == Database(source, tmp_path).rows(
        "SELECT COUNT(*) FROM events"
    )
    checked = await asyncio.to_thread(check, tmp_path / "unused", Database(target, tmp_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    restored_config = config_for(target, tmp_path / "replica")
    again = Broker(await aiohttp_client(create_app(restored_config)), operator_token, config.clock)
    pools = await again.call("GET", f"{base(est)}/pools", est.admin, status=200)
    assert [(p["allocated"], p["in_use"]) for p in pools["items"]] == [(10, 3)]
    assert await again.call("GET", "/v1/keys", status=200) == keys
    renewed = await lease(again, server["server_token"], "ENC-1", 3, status=200)
    assert renewed["id"] == first["id"]
    assert jws.verify(first["token"], jws.keys_from_jwks(keys), now=config.clock.now())["lid"] == first["id"]
    await again.call("POST", "/v1/enroll", None, {"code": code["code"], "name": "enc-host-2"}, 201)
