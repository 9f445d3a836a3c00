"""Admin routes for pools, moves and authentication codes."""

from __future__ import annotations

from aiohttp import web

from broker import codes, policies, pools
from broker.api import shapes
from broker.api.http import (
    PAGE_QUERY,
    answer,
    idempotent_write,
    page_params,
    parse_json,
    query_str,
    read_body,
    route,
    services,
)
from broker.api.path import estate_scope, path_id, read_in_estate
from broker.api.schema import ID, NAME, array, integer, obj
from broker.api.stream import wake_streams

MOVE_ITEMS = array(obj({"purchase_id": ID, "count": integer(1, 10_000_000)}), 1, 100)
NEW_POOL = obj(
    {"name": NAME},
    {
        "moves": array(obj({"purchase_id": ID, "count": integer(1, 10_000_000)}), 0, 100),
        "lease_seconds": integer(60, 30 * 86400),
    },
)
SOFT_LOCK_SECONDS = obj(
    {},
    {
        "hardware": integer(0, policies.MAX_WINDOW_SECONDS),
        "container": integer(0, policies.MAX_WINDOW_SECONDS),
    },
)
POOL_PATCH = obj({}, {"name": NAME, "lease_seconds": integer(60, 30 * 86400), "soft_lock_seconds": SOFT_LOCK_SECONDS})
NEW_MOVE = obj({"from_pool": ID, "to_pool": ID, "items": MOVE_ITEMS})
NEW_CODE = obj({}, {"ttl_seconds": integer(60, 7 * 86400)})

ADMIN = ("operator", "admin")


@route(
    "GET",
    "/v1/estates/{estate}/pools",
    summary="List pools with their counts",
    tag="pools",
    auth=ADMIN,
    responses={200: shapes.page_of(shapes.POOL)},
    query=PAGE_QUERY,
)
async def list_pools(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    after, limit = page_params(request)
    svc = services(request)
    now = svc.clock.now()
    page = await read_in_estate(request, estate_id, lambda tx: pools.page(tx, now, estate_id, after=after, limit=limit))
    return web.json_response(page)


@route(
    "POST",
    "/v1/estates/{estate}/pools",
    summary="Create a pool, optionally moving licences from the Default Pool",
    tag="pools",
    auth=ADMIN,
    body=NEW_POOL,
    responses={201: shapes.POOL},
    idempotent=True,
)
async def create_pool(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    raw = await read_body(request)
    body = parse_json(raw, NEW_POOL)
    svc = services(request)
    now = svc.clock.now()
    seconds = body.get("lease_seconds", svc.config.default_lease_seconds)
    return await idempotent_write(
        request,
        actor,
        raw,
        lambda tx: (201, pools.create(tx, now, actor, estate_id, body["name"], seconds, body.get("moves"))),
    )


@route(
    "GET",
    "/v1/estates/{estate}/pools/{pool}",
    summary="One pool with its holdings",
    tag="pools",
    auth=ADMIN,
    responses={200: shapes.POOL},
)
async def get_pool(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    pool_id = path_id(request, "pool")
    svc = services(request)
    now = svc.clock.now()
    return web.json_response(await svc.store.read(lambda tx: pools.view(tx, now, estate_id, pool_id)))


@route(
    "PATCH",
    "/v1/estates/{estate}/pools/{pool}",
    summary="Rename a pool, or set its lease lifetime or soft-lock windows",
    tag="pools",
    auth=ADMIN,
    body=POOL_PATCH,
    responses={200: shapes.POOL},
)
async def update_pool(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    pool_id = path_id(request, "pool")
    body = parse_json(await read_body(request), POOL_PATCH)
    svc = services(request)
    now = svc.clock.now()
    result = await svc.store.write(
        lambda tx: pools.update(
            tx,
            now,
            actor,
            estate_id,
            pool_id,
            name=body.get("name"),
            lease_seconds=body.get("lease_seconds"),
            soft_lock_seconds=body.get("soft_lock_seconds"),
        ),
        lane=estate_id,
    )
    wake_streams(request)
    return web.json_response(result)


@route(
    "DELETE",
    "/v1/estates/{estate}/pools/{pool}",
    summary="Delete a pool (its holdings return to the Default Pool)",
    tag="pools",
    auth=ADMIN,
    responses={204: None},
)
async def delete_pool(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    pool_id = path_id(request, "pool")
    svc = services(request)
    now = svc.clock.now()
    await svc.store.write(lambda tx: pools.delete(tx, now, actor, estate_id, pool_id))
    return answer(204, None)


@route(
    "POST",
    "/v1/estates/{estate}/moves",
    summary="Move unused licences between pools",
    tag="pools",
    auth=ADMIN,
    body=NEW_MOVE,
    responses={201: shapes.MOVE},
    idempotent=True,
)
async def move(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    raw = await read_body(request)
    body = parse_json(raw, NEW_MOVE)
    now = services(request).clock.now()
    return await idempotent_write(
        request,
        actor,
        raw,
        lambda tx: (201, pools.move(tx, now, actor, estate_id, body["from_pool"], body["to_pool"], body["items"])),
    )


@route(
    "POST",
    "/v1/estates/{estate}/pools/{pool}/auth-codes",
    summary="Make an 8-digit code that binds a server or domain to this pool",
    tag="codes",
    auth=ADMIN,
    body=NEW_CODE,
    responses={201: shapes.NEW_CODE},
    idempotent=True,
)
async def make_code(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    pool_id = path_id(request, "pool")
    raw = await read_body(request)
    body = parse_json(raw, NEW_CODE)
    svc = services(request)
    now = svc.clock.now()
    ttl = body.get("ttl_seconds", svc.config.code_ttl_seconds)
    return await idempotent_write(
        request, actor, raw, lambda tx: (201, codes.make(tx, now, actor, svc.code_key, estate_id, pool_id, ttl))
    )


@route(
    "GET",
    "/v1/estates/{estate}/auth-codes",
    summary="Live codes (never their digits)",
    tag="codes",
    auth=ADMIN,
    responses={200: shapes.page_of(shapes.CODE)},
    query={"pool": ID, **PAGE_QUERY},
)
async def list_codes(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    pool_id = query_str(request, "pool", ID)
    after, limit = page_params(request)
    svc = services(request)
    now = svc.clock.now()
    page = await read_in_estate(
        request, estate_id, lambda tx: codes.list_live(tx, now, estate_id, pool_id, after=after, limit=limit)
    )
    return web.json_response(page)


@route(
    "DELETE",
    "/v1/estates/{estate}/auth-codes/{code}",
    summary="Revoke a live code",
    tag="codes",
    auth=ADMIN,
    responses={204: None},
)
async def revoke_code(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    code_id = path_id(request, "code")
    svc = services(request)
    now = svc.clock.now()
    await svc.store.write(lambda tx: codes.revoke(tx, now, actor, estate_id, code_id))
    return answer(204, None)
