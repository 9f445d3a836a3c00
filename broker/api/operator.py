"""Operator routes: estates and purchases (HTTP only: parse, call, render)."""

from __future__ import annotations

from aiohttp import web

from broker import estates, purchases
from broker.api import shapes
from broker.api.http import (
    PAGE_QUERY,
    authenticate,
    idempotent_write,
    page_params,
    parse_json,
    read_body,
    route,
    services,
)
from broker.api.path import estate_scope, path_id, read_in_estate
from broker.api.schema import LICENCE_TYPE, NAME, TIMESTAMP, integer, obj
from broker.api.stream import wake_streams
from broker.errors import ValidationFailed
from shared.timefmt import parse_ts

NEW_ESTATE = obj({"name": NAME, "admin_name": NAME})
NEW_PURCHASE = obj(
    {"sales_order": NAME, "licence_type": LICENCE_TYPE, "quantity": integer(1, 10_000_000), "expires_at": TIMESTAMP}
)
PURCHASE_PATCH = obj({}, {"status": {"type": "string", "enum": ["valid", "on_hold"]}, "expires_at": TIMESTAMP})


@route(
    "POST",
    "/v1/estates",
    summary="Create an estate with its Default Pool and primary admin",
    tag="operator",
    auth=("operator",),
    body=NEW_ESTATE,
    responses={201: shapes.ESTATE},
    idempotent=True,
)
async def create_estate(request: web.Request) -> web.StreamResponse:
    actor = await authenticate(request, ("operator",))
    raw = await read_body(request)
    body = parse_json(raw, NEW_ESTATE)
    svc = services(request)
    now = svc.clock.now()
    return await idempotent_write(
        request,
        actor,
        raw,
        lambda tx: (
            201,
            estates.create(tx, now, actor, body["name"], body["admin_name"], svc.config.default_lease_seconds),
        ),
    )


def _expiry(text: str, now: float) -> int:
    value = parse_ts(text)
    if value > now + 100 * 366 * 86400 or value < 0:
        raise ValidationFailed([{"field": "expires_at", "message": "is out of range"}])
    return value


@route(
    "POST",
    "/v1/estates/{estate}/purchases",
    summary="Record a purchase (lands in the Default Pool)",
    tag="operator",
    auth=("operator",),
    body=NEW_PURCHASE,
    responses={201: shapes.PURCHASE},
    idempotent=True,
)
async def record_purchase(request: web.Request) -> web.StreamResponse:
    actor = await authenticate(request, ("operator",))
    estate_id = path_id(request, "estate")
    raw = await read_body(request)
    body = parse_json(raw, NEW_PURCHASE)
    now = services(request).clock.now()
    expires_at = _expiry(body["expires_at"], now)
    return await idempotent_write(
        request,
        actor,
        raw,
        lambda tx: (
            201,
            purchases.record(
                tx,
                now,
                actor,
                estate_id,
                sales_order=body["sales_order"],
                licence_type=body["licence_type"],
                quantity=body["quantity"],
                expires_at=expires_at,
            ),
        ),
    )


@route(
    "PATCH",
    "/v1/estates/{estate}/purchases/{purchase}",
    summary="Put a purchase on hold, lift the hold, or change its expiry",
    tag="operator",
    auth=("operator",),
    body=PURCHASE_PATCH,
    responses={200: shapes.PURCHASE},
)
async def update_purchase(request: web.Request) -> web.StreamResponse:
    actor = await authenticate(request, ("operator",))
    estate_id, purchase_id = path_id(request, "estate"), path_id(request, "purchase")
    body = parse_json(await read_body(request), PURCHASE_PATCH)
    svc = services(request)
    now = svc.clock.now()
    expires_at = _expiry(body["expires_at"], now) if "expires_at" in body else None
    result = await svc.store.write(
        lambda tx: purchases.update(
            tx, now, actor, estate_id, purchase_id, status=body.get("status"), expires_at=expires_at
        )
    )
    wake_streams(request)
    return web.json_response(result)


@route(
    "GET",
    "/v1/estates/{estate}/purchases",
    summary="List the estate's purchases",
    tag="admin",
    auth=("operator", "admin"),
    responses={200: shapes.page_of(shapes.PURCHASE)},
    query=PAGE_QUERY,
)
async def list_purchases(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    after, limit = page_params(request)
    svc = services(request)
    now = svc.clock.now()
    page = await read_in_estate(
        request, estate_id, lambda tx: purchases.list_all(tx, now, estate_id, after=after, limit=limit)
    )
    return web.json_response(page)
