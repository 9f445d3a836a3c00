"""Small HTTP helpers for the reliability tests (kept here so that they depend on nothing
but the public API and ``tests.conftest``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.conftest import Broker

ONE = "one-in-one-out"
FOUR = "four-in-one-out"


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


async def call(
    broker: Broker,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Answer:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    resp = await broker.client.request(method, path, data=data, headers=hdrs)
    if resp.content_type == "text/event-stream":  # GET /v1/stream: its head is the answer; it never ends
        resp.close()
        return Answer(resp.status, None, dict(resp.headers))
    text = await resp.text()
    parsed: Any = None
    if text:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
    return Answer(resp.status, parsed, dict(resp.headers))


@dataclass
class Estate:
    id: str
    admin: str
    admin_id: str
    default_pool: str

    @property
    def base(self) -> str:
        return f"/v1/estates/{self.id}"


async def estate(broker: Broker, name: str = "Acme Broadcast") -> Estate:
    body = await broker.estate(name)
    return Estate(body["id"], body["admin_token"], body["admin_id"], body["default_pool_id"])


async def pool(broker: Broker, est: Estate, name: str, moves: dict[str, int]) -> str:
    body = await broker.call(
        "POST",
        f"{est.base}/pools",
        est.admin,
        {"name": name, "moves": [{"purchase_id": p, "count": n} for p, n in moves.items()]},
        201,
    )
    pool_id: str = body["id"]
    return pool_id


async def code(broker: Broker, est: Estate, pool_id: str) -> str:
    body = await broker.call("POST", f"{est.base}/pools/{pool_id}/auth-codes", est.admin, {}, 201)
    value: str = body["code"]
    return value


async def enrol(broker: Broker, est: Estate, pool_id: str, name: str = "host") -> dict[str, Any]:
    digits = await code(broker, est, pool_id)
    body: dict[str, Any] = await broker.call(
        "POST", "/v1/enroll", None, {"code": digits, "name": name, "kind": "server"}, 201
    )
    return body


async def acquire(broker: Broker, server_token: str, encoder: str, count: int, licence_type: str = ONE) -> Answer:
    return await call(
        broker, "POST", "/v1/leases", server_token, {"encoder": encoder, "licence_type": licence_type, "count": count}
    )
