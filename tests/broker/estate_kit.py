"""Helpers for the admin-API tests: an estate with stock, enrolled servers, raw calls."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.conftest import Broker

PROBLEM_KEYS = {"type", "title", "status", "code", "detail"}


@dataclass
class Estate:
    id: str
    admin: str
    default_pool: str
    admin_id: str


async def estate(broker: Broker, name: str = "Acme Broadcast") -> Estate:
    body = await broker.estate(name)
    return Estate(body["id"], body["admin_token"], body["default_pool_id"], body["admin_id"])


def base(est: Estate | str) -> str:
    return f"/v1/estates/{est.id if isinstance(est, Estate) else est}"


async def pools(broker: Broker, est: Estate) -> dict[str, dict[str, Any]]:
    """Pool views keyed by name."""
    body = await broker.call("GET", f"{base(est)}/pools", est.admin, status=200)
    return {p["name"]: p for p in body["items"]}


async def new_pool(broker: Broker, est: Estate, name: str, moves: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": name}
    if moves is not None:
        payload["moves"] = moves
    body: dict[str, Any] = await broker.call("POST", f"{base(est)}/pools", est.admin, payload, 201)
    return body


async def enroll(
    broker: Broker, est: Estate, pool_id: str, name: str = "enc-host-1", kind: str = "server"
) -> dict[str, Any]:
    code = await broker.call("POST", f"{base(est)}/pools/{pool_id}/auth-codes", est.admin, {}, 201)
    body: dict[str, Any] = await broker.call(
        "POST", "/v1/enroll", None, {"code": code["code"], "name": name, "kind": kind}, 201
    )
    return body


async def lease(
    broker: Broker, server_token: str, encoder: str, count: int, licence_type: str = "one-in-one-out", status: int = 201
) -> dict[str, Any]:
    body: dict[str, Any] = await broker.call(
        "POST", "/v1/leases", server_token, {"encoder": encoder, "licence_type": licence_type, "count": count}, status
    )
    return body


@dataclass
class Raw:
    status: int
    content_type: str
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


async def raw(
    broker: Broker,
    method: str,
    path: str,
    token: str | None = None,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> Raw:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    resp = await broker.client.request(method, path, data=data, headers=hdrs)
    text = await resp.text()
    return Raw(resp.status, resp.content_type, dict(resp.headers), text)


def assert_problem(r: Raw, status: int, code: str) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with our stable code, and leaks nothing."""
    assert r.status == status, (r.status, r.text)
    assert r.content_type == "application/problem+json", r.content_type
    body: dict[str, Any] = r.json()
    assert PROBLEM_KEYS <= set(body), body
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"].endswith(code)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body
