"""Helpers for the lease tests: an estate with a pool, an enrolled server, and short calls.

Every helper speaks HTTP to the real app through the ``Broker`` fixture; nothing here
reaches into the broker's modules.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from shared.timefmt import parse_ts
from tests.conftest import DAY, Broker

ONE = "one-in-one-out"
FOUR = "four-in-one-out"


@dataclass
class Site:
    """One estate, one custom pool holding the given purchases, one server bound to it."""

    broker: Broker
    estate_id: str
    admin: str
    default_pool_id: str
    pool_id: str
    server_id: str
    server: str
    purchases: dict[str, dict[str, Any]] = field(default_factory=dict)  # by sales order

    async def acquire(
        self, encoder: str, count: int, licence_type: str = ONE, status: int | None = None, token: str | None = None
    ) -> Any:
        return await self.broker.call(
            "POST",
            "/v1/leases",
            token or self.server,
            {"encoder": encoder, "licence_type": licence_type, "count": count},
            status,
        )

    async def renew(self, lease_id: str, status: int | None = None, token: str | None = None) -> Any:
        return await self.broker.call("POST", f"/v1/leases/{lease_id}/renew", token or self.server, {}, status)

    async def release(self, lease_id: str, status: int | None = 204, token: str | None = None) -> Any:
        return await self.broker.call("DELETE", f"/v1/leases/{lease_id}", token or self.server, None, status)

    async def pool(self, pool_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = await self.broker.call(
            "GET", f"/v1/estates/{self.estate_id}/pools/{pool_id or self.pool_id}", self.admin, status=200
        )
        return body

    async def holding(self, sales_order: str, pool_id: str | None = None) -> dict[str, Any]:
        view = await self.pool(pool_id)
        found: dict[str, Any] = next(h for h in view["holdings"] if h["sales_order"] == sales_order)
        return found

    async def leases(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        body = await self.broker.call("GET", f"/v1/estates/{self.estate_id}/leases?{query}", self.admin, status=200)
        items: list[dict[str, Any]] = body["items"]
        return items

    async def events(self, action: str | None = None) -> list[dict[str, Any]]:
        query = f"?action={action}&limit=500" if action else "?limit=500"
        body = await self.broker.call("GET", f"/v1/estates/{self.estate_id}/events{query}", self.admin, status=200)
        items: list[dict[str, Any]] = body["items"]
        return items

    async def servers(self) -> list[dict[str, Any]]:
        body = await self.broker.call("GET", f"/v1/estates/{self.estate_id}/servers", self.admin, status=200)
        items: list[dict[str, Any]] = body["items"]
        return items

    async def enrol(self, name: str = "host-2", pool_id: str | None = None, kind: str = "server") -> dict[str, Any]:
        return await enrol(self.broker, self.admin, self.estate_id, pool_id or self.pool_id, name, kind)

    async def set_lease_seconds(self, seconds: int, pool_id: str | None = None) -> None:
        await self.broker.call(
            "PATCH",
            f"/v1/estates/{self.estate_id}/pools/{pool_id or self.pool_id}",
            self.admin,
            {"lease_seconds": seconds},
            200,
        )

    async def set_purchase(self, sales_order: str, **patch: Any) -> dict[str, Any]:
        pid = self.purchases[sales_order]["id"]
        body: dict[str, Any] = await self.broker.call(
            "PATCH", f"/v1/estates/{self.estate_id}/purchases/{pid}", self.broker.operator, patch, 200
        )
        return body


async def enrol(
    broker: Broker, admin: str, estate_id: str, pool_id: str, name: str = "host-1", kind: str = "server"
) -> dict[str, Any]:
    code = await broker.call("POST", f"/v1/estates/{estate_id}/pools/{pool_id}/auth-codes", admin, {}, 201)
    body: dict[str, Any] = await broker.call(
        "POST", "/v1/enroll", None, {"code": code["code"], "name": name, "kind": kind}, 201
    )
    return body


async def make_site(
    broker: Broker,
    stock: list[tuple[str, int, float, str]] | None = None,
    *,
    estate_name: str = "Acme Broadcast",
    move: dict[str, int] | None = None,
) -> Site:
    """An estate whose pool "Paris" holds ``stock`` (sales order, quantity, days to expiry,
    type); ``move`` moves only that many per sales order (the rest stays in Default)."""
    stock = stock if stock is not None else [("SO-1", 5, 365, ONE)]
    est = await broker.estate(estate_name)
    bought = {}
    for so, qty, days, lt in stock:
        bought[so] = await broker.purchase(est["id"], so, qty, lt, days)
    counts = move or {so: qty for so, qty, _, _ in stock}
    pool = await broker.call(
        "POST",
        f"/v1/estates/{est['id']}/pools",
        est["admin_token"],
        {"name": "Paris", "moves": [{"purchase_id": bought[so]["id"], "count": n} for so, n in counts.items() if n]},
        201,
    )
    server = await enrol(broker, est["admin_token"], est["id"], pool["id"])
    return Site(
        broker,
        est["id"],
        est["admin_token"],
        est["default_pool_id"],
        pool["id"],
        server["server_id"],
        server["server_token"],
        bought,
    )


def claims_of(token: str) -> dict[str, Any]:
    """The token's claims, unverified (the signing tests verify; these only read)."""
    payload = token.split(".")[1]
    parsed: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return parsed


def header_of(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    parsed: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return parsed


def ts(text: str) -> int:
    return parse_ts(text)


def seats_of(lease: dict[str, Any]) -> dict[str, int]:
    return {s["sales_order"]: s["count"] for s in lease["seats"]}


__all__ = ["DAY", "FOUR", "ONE", "Site", "claims_of", "enrol", "header_of", "make_site", "seats_of", "ts"]
