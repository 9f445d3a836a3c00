"""Fixtures shared by every test: a real broker on a real SQLite file or a real PostgreSQL
database (each test that builds one runs on both), a manual clock."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from broker.config import load
from broker.ids import new_token
from shared import logs
from tests.dbaccess import Database
from tests.postgres import TEST_SECRET_KEY, PostgresServer

# 2027-01-01T00:00:00Z: tests speak of dates relative to this.
T0 = 1_798_761_600.0
DAY = 86400


@pytest.fixture(autouse=True)
def _no_stale_log_handler() -> Iterator[None]:
    """A test that runs a command's ``main`` in-process installs ``shared.logs``' handler
    on the stderr pytest captured for it; take it off afterwards, or later tests' log
    records go to a closed file ("--- Logging error ---" in every failure's output)."""
    yield
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, logs._Handler):
            root.removeHandler(handler)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def operator_token() -> str:
    return new_token("op")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that builds a broker (``store_kind`` is under ``config_factory``) runs on
    both stores, unless marked ``sqlite_only`` (it reads the SQLite file, say)."""
    if "store_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("sqlite_only") is None:
        metafunc.parametrize("store_kind", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def database_url(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    """A fresh PostgreSQL database for this test (dropped after it), or None for SQLite."""
    if store_kind != "postgres":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create()
    request.addfinalizer(lambda: server.drop(url))  # dropped when the next is made (tests/postgres.py)
    return url


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (a schema of the run's) for a store-level test."""
    url = postgres_server.create()
    yield url
    postgres_server.drop(url)


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty PostgreSQL database of its own, as an operator makes one for replicas."""
    url = postgres_server.create_empty()
    yield url
    postgres_server.drop(url)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.reach()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def config_factory(
    tmp_path: Path, clock: ManualClock, operator_token: str, database_url: str | None
) -> Callable[..., Any]:
    def make(**overrides: Any) -> Any:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "operator_token": operator_token,
            "clock": clock,
            "sqlite_synchronous": "normal",
        }
        if database_url is not None:
            base.update(database=database_url, secret_key=TEST_SECRET_KEY, database_pool_size=4)
        base.update(overrides)
        return load(None, env={}, **base)

    return make


@dataclass
class Broker:
    """A test client plus the tokens and helpers most tests need."""

    client: TestClient[Any, Any]
    operator: str
    clock: ManualClock

    @property
    def config(self) -> Any:
        """The broker's settings (its store among them)."""
        from broker.services import SERVICES

        return self.client.app[SERVICES].config

    @property
    def db(self) -> Database:
        """The rows behind the broker, read directly (``tests/dbaccess.py``)."""
        return Database.of(self.config)

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs.update(self.auth(token))
        resp = await self.client.request(method, path, json=json, headers=hdrs)
        body = await resp.json() if resp.status != 204 else None
        if status is not None:
            assert resp.status == status, (resp.status, body)
        return body

    async def estate(self, name: str = "Acme Broadcast") -> dict[str, Any]:
        body: dict[str, Any] = await self.call(
            "POST", "/v1/estates", self.operator, {"name": name, "admin_name": "Alice"}, 201
        )
        return body

    async def purchase(
        self,
        estate_id: str,
        sales_order: str = "SO-1001",
        quantity: int = 10,
        licence_type: str = "one-in-one-out",
        expires_in_days: float = 365,
    ) -> dict[str, Any]:
        from shared.timefmt import format_ts

        body: dict[str, Any] = await self.call(
            "POST",
            f"/v1/estates/{estate_id}/purchases",
            self.operator,
            {
                "sales_order": sales_order,
                "licence_type": licence_type,
                "quantity": quantity,
                "expires_at": format_ts(self.clock.now() + expires_in_days * DAY),
            },
            201,
        )
        return body


@pytest.fixture
async def broker(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> Broker:
    client = await aiohttp_client(create_app(config_factory()))
    return Broker(client, operator_token, clock)
