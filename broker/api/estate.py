"""Admin routes for servers, admins, leases, the audit log and the estate summary."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from broker import audit, estates, leases, paging, pools, servers
from broker.api import csvout, shapes
from broker.api.http import (
    PAGE_QUERY,
    answer,
    idempotent_write,
    page_params,
    parse_json,
    query_int,
    query_str,
    read_body,
    route,
    services,
)
from broker.api.path import estate_scope, path_id, read_in_estate
from broker.api.schema import ID, LICENCE_TYPE, NAME, SERIAL, integer, obj
from broker.api.stream import wake_streams
from broker.errors import ValidationFailed

ADMIN = ("operator", "admin")
LIMIT = {
    **obj({}, {"max": integer(0, 10_000_000), "reserved": integer(0, 10_000_000)}),
    "type": ["object", "null"],
}
SERVER_PATCH = obj(
    {},
    {
        "pool_id": ID,
        "limits": {
            "type": "object",
            "propertyNames": LICENCE_TYPE,
            "additionalProperties": LIMIT,
            "maxProperties": 64,
        },
    },
)
OVERRIDE_QUERY = {"override_soft_lock": {"type": "string", "enum": ["true", "false"]}}
NEW_ADMIN = obj({"name": NAME})

SERVER_COLUMNS = ("id", "name", "kind", "pool_id", "enrolled_at", "last_seen_at", "in_use", "leases")
LEASE_COLUMNS = (
    "id",
    "pool_id",
    "server_id",
    "server_name",
    "encoder",
    "licence_type",
    "count",
    "created_at",
    "renewed_at",
    "expires_at",
)
EVENT_COLUMNS = (
    "id",
    "at",
    "actor_kind",
    "actor_id",
    "actor_name",
    "action",
    "pool_id",
    "subject_id",
    "details",
    "hash",
)
Page = dict[str, Any]


@route(
    "GET",
    "/v1/estates/{estate}",
    summary="The estate, its summary per licence type and admins",
    tag="estate",
    auth=ADMIN,
    responses={
        200: shapes.shape(
            {
                "id": ID,
                "name": shapes.STR,
                "summary": shapes.SUMMARY,
                "admins": {"type": "array", "items": shapes.ADMIN},
            }
        )
    },
)
async def get_estate(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    svc = services(request)
    now = svc.clock.now()

    def read(tx):  # type: ignore[no-untyped-def]
        row = estates.get(tx, estate_id)
        return {
            "id": row["id"],
            "name": row["name"],
            "summary": pools.summary(tx, now, estate_id),
            # The first page: the whole list is GET …/admins.
            "admins": estates.list_admins(tx, estate_id, limit=paging.MAX_LIMIT)["items"],
        }

    return web.json_response(await svc.store.read(read))


@route(
    "GET",
    "/v1/estates/{estate}/servers",
    summary="Servers and domains with their seats in use",
    tag="servers",
    auth=ADMIN,
    responses={200: shapes.page_of(shapes.SERVER)},
    query={"pool": ID, **PAGE_QUERY},
    csv=SERVER_COLUMNS,
)
async def list_servers(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    pool_id = query_str(request, "pool", ID)
    after, limit = page_params(request)
    svc = services(request)
    now = svc.clock.now()

    async def read_page(cursor: str, limit: int) -> Page:
        return await read_in_estate(
            request, estate_id, lambda tx: servers.list_all(tx, now, estate_id, pool_id, after=cursor, limit=limit)
        )

    if csvout.wants_csv(request):
        return await _csv(request, f"servers-{estate_id}.csv", SERVER_COLUMNS, read_page, after)
    return web.json_response(await read_page(after, limit))


@route(
    "PATCH",
    "/v1/estates/{estate}/servers/{server}",
    summary="Bind a server to another pool (refused while it holds leases), or set its limits per licence type",
    tag="servers",
    auth=ADMIN,
    body=SERVER_PATCH,
    responses={200: shapes.SERVER},
)
async def rebind_server(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    server_id = path_id(request, "server")
    body = parse_json(await read_body(request), SERVER_PATCH)
    svc = services(request)
    now = svc.clock.now()
    if not body:
        raise ValidationFailed([{"field": "", "message": "give pool_id, limits or both"}])
    result = await svc.store.write(
        lambda tx: servers.update(
            tx, now, actor, estate_id, server_id, pool_id=body.get("pool_id"), limits=body.get("limits")
        ),
        lane=estate_id,
    )
    svc.principals.forget(server_id=server_id)
    wake_streams(request)
    return web.json_response(result)


@route(
    "DELETE",
    "/v1/estates/{estate}/servers/{server}",
    summary="Remove a server: its leases are freed and its token stops working",
    tag="servers",
    auth=ADMIN,
    responses={204: None},
    query=OVERRIDE_QUERY,
)
async def remove_server(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    server_id = path_id(request, "server")
    override = _override(request)
    svc = services(request)
    now = svc.clock.now()
    await svc.store.write(
        lambda tx: servers.remove(tx, now, actor, estate_id, server_id, override_soft_lock=override), lane=estate_id
    )
    svc.principals.forget(server_id=server_id)
    wake_streams(request)
    return answer(204, None)


@route(
    "GET",
    "/v1/estates/{estate}/admins",
    summary="The estate's admins",
    tag="estate",
    auth=ADMIN,
    responses={200: shapes.page_of(shapes.ADMIN)},
    query=PAGE_QUERY,
)
async def list_admins(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    after, limit = page_params(request)
    page = await services(request).store.read(lambda tx: estates.list_admins(tx, estate_id, after=after, limit=limit))
    return web.json_response(page)


@route(
    "POST",
    "/v1/estates/{estate}/admins",
    summary="Add an admin (primary admin only)",
    tag="estate",
    auth=ADMIN,
    body=NEW_ADMIN,
    responses={201: shapes.NEW_ADMIN},
    idempotent=True,
)
async def add_admin(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    raw = await read_body(request)
    body = parse_json(raw, NEW_ADMIN)
    now = services(request).clock.now()
    return await idempotent_write(
        request, actor, raw, lambda tx: (201, estates.add_admin(tx, now, actor, estate_id, body["name"]))
    )


@route(
    "DELETE",
    "/v1/estates/{estate}/admins/{admin}",
    summary="Remove an admin (primary admin only); their token stops working",
    tag="estate",
    auth=ADMIN,
    responses={204: None},
)
async def remove_admin(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    admin_id = path_id(request, "admin")
    svc = services(request)
    now = svc.clock.now()
    await svc.store.write(lambda tx: estates.remove_admin(tx, now, actor, estate_id, admin_id))
    svc.principals.forget(admin_id=admin_id)
    return answer(204, None)


@route(
    "GET",
    "/v1/estates/{estate}/leases",
    summary="Live leases, filtered and cursor-paged",
    tag="leases",
    auth=ADMIN,
    responses={200: shapes.page_of(shapes.ADMIN_LEASE)},
    query={
        "pool": ID,
        "server": ID,
        "encoder": SERIAL,
        "after": ID,
        "limit": {"type": "integer", "minimum": 1, "maximum": 500},
    },
    csv=LEASE_COLUMNS,
)
async def list_leases(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    pool_id = query_str(request, "pool", ID)
    server_id = query_str(request, "server", ID)
    encoder = query_str(request, "encoder", SERIAL)
    after = query_str(request, "after", ID) or ""
    limit = query_int(request, "limit", 100, 1, 500)
    svc = services(request)
    now = svc.clock.now()

    async def read_page(cursor: str, limit: int) -> Page:
        return await read_in_estate(
            request,
            estate_id,
            lambda tx: leases.list_live(
                tx, now, estate_id, pool_id=pool_id, server_id=server_id, encoder=encoder, after=cursor, limit=limit
            ),
        )

    if csvout.wants_csv(request):
        return await _csv(request, f"leases-{estate_id}.csv", LEASE_COLUMNS, read_page, after)
    return web.json_response(await read_page(after, limit))


@route(
    "DELETE",
    "/v1/estates/{estate}/leases/{lease}",
    summary="Force-release a lease (its agent hears at once on /v1/stream, else at its next renewal)",
    tag="leases",
    auth=ADMIN,
    responses={204: None},
    query=OVERRIDE_QUERY,
)
async def revoke_lease(request: web.Request) -> web.StreamResponse:
    actor, estate_id = await estate_scope(request)
    lease_id = path_id(request, "lease")
    override = _override(request)
    svc = services(request)
    now = svc.clock.now()
    await svc.store.write(
        lambda tx: leases.revoke(tx, now, actor, estate_id, lease_id, override_soft_lock=override), lane=estate_id
    )
    wake_streams(request)
    return answer(204, None)


def _override(request: web.Request) -> bool:
    """``override_soft_lock=true``: free the encoder's held seats at once (audited)."""
    return query_str(request, "override_soft_lock", OVERRIDE_QUERY["override_soft_lock"]) == "true"


EVENT_ORDER = {"type": "string", "enum": list(audit.ORDERS)}
EVENT_ACTION = {"type": "string", "pattern": "^[a-z_.]{1,64}$"}


@route(
    "GET",
    "/v1/estates/{estate}/events",
    summary="The audit log, cursor-paged: oldest first, or newest first with order=desc",
    tag="estate",
    auth=ADMIN,
    responses={200: shapes.page_of(shapes.EVENT)},
    query={
        "after": {"type": "string", "pattern": "^[0-9]{1,18}$"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 500},
        "order": EVENT_ORDER,
        "pool": ID,
        "action": EVENT_ACTION,
    },
    csv=EVENT_COLUMNS,
)
async def list_events(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    after = query_int(request, "after", 0, 0, 10**18 - 1) if "after" in request.query else None
    limit = query_int(request, "limit", 100, 1, audit.PAGE_MAX)
    order = query_str(request, "order", EVENT_ORDER) or "asc"
    pool_id = query_str(request, "pool", ID)
    action = query_str(request, "action", EVENT_ACTION)

    async def read_page(cursor: int | None, limit: int) -> Page:
        return await read_in_estate(
            request,
            estate_id,
            lambda tx: audit.page(
                tx, estate_id, after=cursor, limit=limit, order=order, pool_id=pool_id, action=action
            ),
        )

    if csvout.wants_csv(request):
        return await _csv(request, f"events-{estate_id}.csv", EVENT_COLUMNS, read_page, after, _event_cells, int)
    return web.json_response(await read_page(after, limit))


# Events verified per call: each call is one read on the broker's reader thread, which
# other reads wait behind, so a slice is kept to about 15 ms (bench.chain).
CHAIN_LIMIT = 1_000


@route(
    "GET",
    "/v1/estates/{estate}/events/chain",
    summary="Verify the audit log's hash chain, up to 1,000 events a call from just past after",
    tag="estate",
    auth=ADMIN,
    responses={200: shapes.CHAIN},
    query={"after": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
)
async def verify_chain(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    after = query_int(request, "after", 0, 0, 10**18 - 1)
    walked = await read_in_estate(
        request, estate_id, lambda tx: audit.walk(tx, estate_id, after=after, limit=CHAIN_LIMIT)
    )
    last = None if walked.last_id is None else {"id": str(walked.last_id), "hash": walked.last_hash}
    broken = None if walked.broken_at is None else {"id": str(walked.broken_at), "reason": walked.reason}
    more = walked.more and broken is None
    return web.json_response(
        {
            "whole": broken is None,
            "checked": walked.checked,
            "last": last,
            "broken": broken,
            "next": str(walked.last_id) if more and walked.last_id is not None else None,
        }
    )


def _event_cells(event: dict[str, Any]) -> list[Any]:
    actor = event["actor"]
    details = json.dumps(event["details"], separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return [
        event["id"],
        event["at"],
        actor["kind"],
        actor["id"],
        actor["name"],
        event["action"],
        event["pool_id"],
        event["subject_id"],
        details,
        event["hash"],
    ]


async def _csv(
    request: web.Request,
    filename: str,
    columns: tuple[str, ...],
    read_page: Callable[[Any, int], Awaitable[Page]],
    first: Any,
    row: Callable[[dict[str, Any]], Sequence[Any]] | None = None,
    cursor_type: Callable[[str], Any] = str,
) -> web.StreamResponse:
    """Every item of a cursor-paged list from ``first`` on, as CSV, a page of the store at a
    time (``limit`` does not apply: a spreadsheet wants the whole list)."""

    async def page(cursor: Any) -> csvout.Page:
        got = await read_page(cursor, csvout.PAGE)
        return got["items"], None if got["next"] is None else cursor_type(got["next"])

    return await csvout.stream(request, filename, columns, page, first, row)
