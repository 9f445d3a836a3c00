"""Fixtures shared by every test: a real broker on a real SQLite file, a manual clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from broker.config import load
from broker.ids import new_token

# 2027-01-01T00:00:00Z: tests speak of dates relative to this.
T0 = 1_798_761_600.0
DAY = 86400


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def operator_token() -> str:
    return new_token("op")


@pytest.fixture
def config_factory(tmp_path: Path, clock: ManualClock, operator_token: str) -> Callable[..., Any]:
    def make(**overrides: Any) -> Any:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "operator_token": operator_token,
            "clock": clock,
            "sqlite_synchronous": "normal",
        }
        base.update(overrides)
        return load(None, env={}, **base)

    return make


@dataclass
class Broker:
    """A test client plus the tokens and helpers most tests need."""

    client: TestClient[Any, Any]
    operator: str
    clock: ManualClock

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
