"""Admin routes for webhook endpoints: add, list, delete, rotate the secret, test, deliveries."""

from __future__ import annotations

from aiohttp import web

from broker.api import shapes
from broker.api.http import (
    PAGE_QUERY,
    answer,
    idempotent_write,
    page_params,
    parse_json,
    query_int,
    read_body,
    route,
    services,
)
from broker.api.path import estate_scope, path_id, read_in_estate
from broker.api.schema import ID, TIMESTAMP, array, obj
from broker.webhooks import endpoints, events, signing
from broker.webhooks.runtime import Webhooks

ADMIN = ("operator", "admin")
WEBHOOKS = web.AppKey("webhooks", Webhooks)

EVENT_TYPE = {"type": "string", "enum": list(events.TYPES)}
NEW_ENDPOINT = obj({"url": {"type": "string", "minLength": 1, "maxLength": 2048}, "events": array(EVENT_TYPE, 1, 50)})
ENDPOINT = shapes.shape(
    {
        "id": ID,
        "url": shapes.STR,
        "events": {"type": "array", "items": shapes.STR},
        "created_at": TIMESTAMP,
        "failing": shapes.BOOL,
        "failures": shapes.INT,
        "last_success_at": shapes.NULLABLE_TS,
        "last_failure_at": shapes.NULLABLE_TS,
    }
)
NEW_SECRET = {"type": "string", "pattern": "^" + signing.PREFIX + "[A-Za-z0-9+/=]+$"}
CREATED = shapes.shape({**ENDPOINT["properties"], "secret": NEW_SECRET})
ROTATED = shapes.shape({"id": ID, "secret": NEW_SECRET, "previous_valid_until": TIMESTAMP})
TESTED = shapes.shape({"event_id": shapes.STR})
ATTEMPT = shapes.shape(
    {
        "id": shapes.STR,
        "event_id": shapes.STR,
        "event_type": shapes.STR,
        "attempt": shapes.INT,
        "at": TIMESTAMP,
        "status_code": {"type": ["integer", "null"]},
        "latency_ms": shapes.INT,
        "error": {"type": ["string", "null"]},
        "outcome": {"type": "string", "enum": ["delivered", "retrying", "failed"]},
    }
)
DELIVERIES = shapes.shape(
    {
        "items": {"type": "array", "items": ATTEMPT},
        "next": {"type": ["string", "null"]},
        "deliveries": shapes.shape({"pending": shapes.INT, "delivered": shapes.INT, "failed": shapes.INT}),
    }
)
BASE = "/v1/estates/{estate}/webhooks"
EMPTY = obj({})


def _webhooks(request: web.Request) -> Webhooks:
    return request.app[WEBHOOKS]


@route(
    "POST",
    BASE,
    summary="Add a webhook endpoint; its signing secret is shown in this answer only",
    tag="webhooks",
    auth=ADMIN,
    body=NEW_ENDPOINT,
    responses={201: CREATED},
    idempotent=True,
)
async def create_webhook(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    raw = await read_body(request)
    body = parse_json(raw, NEW_ENDPOINT)
    hooks = _webhooks(request)
    await hooks.vet(body["url"])
    secret = signing.new_secret()
    now = services(request).clock.now()
    return await idempotent_write(
        request,
        actor,
        raw,
        lambda tx: (
            201,
            endpoints.create(tx, now, actor, estate_id, body["url"], body["events"], hooks.sealer, secret),
        ),
    )


@route(
    "GET",
    BASE,
    summary="The estate's webhook endpoints (never their secrets)",
    tag="webhooks",
    auth=ADMIN,
    responses={200: shapes.page_of(ENDPOINT)},
    query=PAGE_QUERY,
)
async def list_webhooks(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    after, limit = page_params(request)
    page = await read_in_estate(
        request, estate_id, lambda tx: endpoints.list_all(tx, estate_id, after=after, limit=limit)
    )
    return web.json_response(page)


@route(
    "GET",
    BASE + "/{webhook}",
    summary="One webhook endpoint",
    tag="webhooks",
    auth=ADMIN,
    responses={200: ENDPOINT},
)
async def get_webhook(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    endpoint_id = path_id(request, "webhook")
    row = await services(request).store.read(lambda tx: endpoints.get(tx, estate_id, endpoint_id))
    return web.json_response(endpoints.view(row))


@route(
    "DELETE",
    BASE + "/{webhook}",
    summary="Delete a webhook endpoint and its pending deliveries",
    tag="webhooks",
    auth=ADMIN,
    responses={204: None},
)
async def delete_webhook(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    endpoint_id = path_id(request, "webhook")
    svc = services(request)
    now = svc.clock.now()
    await svc.store.write(lambda tx: endpoints.delete(tx, now, actor, estate_id, endpoint_id))
    return answer(204, None)


@route(
    "POST",
    BASE + "/{webhook}/rotate-secret",
    summary="A new signing secret, shown in this answer only; the old one also signs for 24 hours",
    tag="webhooks",
    auth=ADMIN,
    body=EMPTY,
    responses={200: ROTATED},
    idempotent=True,
)
async def rotate_webhook_secret(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    endpoint_id = path_id(request, "webhook")
    raw = await read_body(request)
    parse_json(raw, EMPTY)
    hooks = _webhooks(request)
    secret = signing.new_secret()
    now = services(request).clock.now()
    return await idempotent_write(
        request,
        actor,
        raw,
        lambda tx: (200, endpoints.rotate(tx, now, actor, estate_id, endpoint_id, hooks.sealer, secret)),
    )


@route(
    "POST",
    BASE + "/{webhook}/test",
    summary="Send a webhook.test event to this endpoint",
    tag="webhooks",
    auth=ADMIN,
    body=EMPTY,
    responses={202: TESTED},
    idempotent=True,
)
async def test_webhook(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    endpoint_id = path_id(request, "webhook")
    raw = await read_body(request)
    parse_json(raw, EMPTY)
    now = services(request).clock.now()
    response = await idempotent_write(
        request, actor, raw, lambda tx: (202, endpoints.send_test(tx, now, actor, estate_id, endpoint_id))
    )
    _webhooks(request).dispatcher.wake()
    return response


@route(
    "GET",
    BASE + "/{webhook}/deliveries",
    summary="Delivery attempts to this endpoint, newest first (status, latency, error), and totals",
    tag="webhooks",
    auth=ADMIN,
    responses={200: DELIVERIES},
    query={
        "before": {"type": "string", "pattern": "^[0-9]{1,18}$"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 500},
    },
)
async def list_deliveries(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    endpoint_id = path_id(request, "webhook")
    before = query_int(request, "before", 0, 0, 10**18 - 1)
    limit = query_int(request, "limit", 100, 1, 500)
    page = await read_in_estate(
        request, estate_id, lambda tx: endpoints.deliveries(tx, estate_id, endpoint_id, before=before, limit=limit)
    )
    return web.json_response(page)
