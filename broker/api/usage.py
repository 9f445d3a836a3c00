"""Usage over time (``broker.usage``), as JSON or, for spreadsheets, CSV."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker import usage
from broker.api import csvout, shapes
from broker.api.http import query_int, route, services
from broker.api.path import estate_scope, path_id, read_in_estate
from broker.api.schema import TIMESTAMP, Schema
from broker.errors import ValidationFailed
from shared.timefmt import parse_ts

ADMIN = ("operator", "admin")
WEEK = 7 * 86400
MAX_STEP = 366 * 86400
USAGE_QUERY: dict[str, Schema] = {
    "from": TIMESTAMP,
    "to": TIMESTAMP,
    "step": {"type": "integer", "minimum": 60, "maximum": MAX_STEP},
}
POINT_COLUMNS = ("at", "allocated", "in_use", "available")


def usage_range(request: web.Request, now: float) -> usage.Range:
    """``from``, ``to`` and ``step`` checked: the last 7 days, hourly, when absent. A ``to``
    at or after now (or none) ends with the live point; ``from`` must come before it."""
    step = query_int(request, "step", 3600, 60, MAX_STEP)
    errors: list[dict[str, str]] = []
    stamps: dict[str, int] = {}
    for name in ("from", "to"):
        raw = request.query.get(name)
        if raw is not None:
            try:
                stamps[name] = parse_ts(raw)
            except ValueError as exc:
                errors.append({"field": name, "message": str(exc)})
    if errors:
        raise ValidationFailed(errors)
    end = min(stamps.get("to", int(now)), int(now))
    live = "to" not in stamps or stamps["to"] >= int(now)
    start = stamps.get("from", end - WEEK)
    if start >= end and not (live and start == end):
        raise ValidationFailed([{"field": "from", "message": "must be before to (and before now)"}])
    first = -(-start // step) * step  # the first multiple of step at or after start
    if (end - first) // step + 1 > usage.MAX_POINTS:
        raise ValidationFailed(
            [{"field": "step", "message": f"too small for the range: at most {usage.MAX_POINTS} points an answer"}]
        )
    return usage.Range(start=first, end=end if not live else int(now) + 1, step=step, live=live)


@route(
    "GET",
    "/v1/estates/{estate}/pools/{pool}/usage",
    summary="A pool's allocated, in use and available over time; the last point is live",
    tag="usage",
    auth=ADMIN,
    responses={200: shapes.POOL_USAGE},
    query=USAGE_QUERY,
    csv=POINT_COLUMNS,
)
async def pool_usage(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    pool_id = path_id(request, "pool")
    svc = services(request)
    now = svc.clock.now()
    r = usage_range(request, now)
    answer = await read_in_estate(request, estate_id, lambda tx: usage.pool_usage(tx, now, estate_id, pool_id, r))
    if csvout.wants_csv(request):
        return await _csv(request, f"usage-{pool_id}.csv", POINT_COLUMNS, answer["points"])
    return web.json_response(answer)


@route(
    "GET",
    "/v1/estates/{estate}/usage",
    summary="Allocated, in use and available over time per licence type across the estate",
    tag="usage",
    auth=ADMIN,
    responses={200: shapes.ESTATE_USAGE},
    query=USAGE_QUERY,
    csv=("licence_type", *POINT_COLUMNS),
)
async def estate_usage(request: web.Request) -> web.StreamResponse:
    _, estate_id = await estate_scope(request)
    svc = services(request)
    now = svc.clock.now()
    r = usage_range(request, now)
    answer = await read_in_estate(request, estate_id, lambda tx: usage.estate_usage(tx, now, estate_id, r))
    if csvout.wants_csv(request):
        rows = [{"licence_type": t, **p} for t, s in answer["by_type"].items() for p in s["points"]]
        return await _csv(request, f"usage-{estate_id}.csv", ("licence_type", *POINT_COLUMNS), rows)
    return web.json_response(answer)


async def _csv(
    request: web.Request, filename: str, columns: tuple[str, ...], rows: list[dict[str, Any]]
) -> web.StreamResponse:
    async def one_page(_: Any) -> csvout.Page:
        return rows, None

    return await csvout.stream(request, filename, columns, one_page)
