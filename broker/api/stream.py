"""``GET /v1/stream``: Server-Sent Events that tell an agent at once what an admin did.

The wire (docs/push.md): a ``retry:`` hint, then events, each ``id:`` (the event's id,
for ``Last-Event-ID``), ``event:`` (its type) and one ``data:`` line of JSON
``{type, id, timestamp, data}``; a comment line (``: keep-alive``) every
``stream_heartbeat_seconds`` when there is nothing else to send, with an ``id:`` line
when the stream's position moved on events for other servers (so a resume does not
start from a point that has since been pruned). A first connection (no Last-Event-ID)
starts with ``ready``; a resume from before the retention, or from an id this database
never gave, with ``resync`` (the agent then renews everything). ``server.removed`` is
the last event of its stream: the token is dead.

The stream ends at once when the broker shuts down (``on_shutdown`` closes the hub), so
an open stream never holds up a graceful exit; the agent reconnects to another replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from broker.api.http import REQUEST_ID, authenticate, route, services
from broker.errors import Unauthenticated, ValidationFailed
from broker.push import events
from broker.push.events import Event
from broker.push.hub import Hub, Subscription
from broker.services import SERVICES, Services
from shared.timefmt import format_ts

log = logging.getLogger("tenure.stream")

HUB = web.AppKey("stream_hub", Hub)
# The reconnection delay suggested to clients (SSE ``retry:``), in milliseconds.
RETRY_MS = 2000
HEARTBEAT_HEADER = "X-Heartbeat-Seconds"
# A write the client does not take within this long ends the stream (a dead peer).
WRITE_SECONDS = 10.0


def setup(app: web.Application) -> None:
    """The process's hub: started after the store, fed by the PostgreSQL listener when
    there is one, closed (ending every stream) as shutdown begins."""
    app.cleanup_ctx.append(_hub)
    app.on_shutdown.append(_close_streams)


SIBLING_POLL_SECONDS = 1.0
"""How often a SQLite worker's hub looks for events its sibling workers wrote."""


async def _hub(app: web.Application) -> AsyncIterator[None]:
    svc = app[SERVICES]
    config = svc.config

    async def reload_keys() -> None:
        await svc.keyring.reload(svc.clock.now())

    poll_seconds = config.stream_poll_seconds
    if config.relay_writes:
        # One of several workers on one SQLite file (``serve --workers``): an event written
        # by a sibling wakes only the sibling, and no NOTIFY crosses processes here; so look
        # often enough that an admin's revocation still reaches every agent within 2 s.
        poll_seconds = min(poll_seconds, SIBLING_POLL_SECONDS)
    hub = Hub(
        svc.store,
        svc.clock,
        poll_seconds=poll_seconds,
        max_per_server=config.stream_max_per_server,
        retention_seconds=config.stream_retention_seconds,
        on_keys_rotated=reload_keys,
    )
    await hub.start()
    app[HUB] = hub
    tasks = [asyncio.create_task(hub.run(), name="stream hub"), asyncio.create_task(hub.prune_loop(), name="prune")]
    if config.database is not None:
        from broker.store.listen import listen

        listening = listen(config.database, hub.wake, wait_seconds=config.database_timeout_seconds)
        tasks.append(asyncio.create_task(listening, name="stream listener"))
    try:
        yield
    finally:
        hub.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close_streams(app: web.Application) -> None:
    hub = app.get(HUB)
    if hub is not None:
        hub.close()


def wake_streams(request: web.Request) -> None:
    """An event was just committed by this request: tell this process's streams now
    (other replicas hear it through PostgreSQL's NOTIFY)."""
    hub = request.app.get(HUB)
    if hub is not None:
        hub.wake()


EVENT_ID = {"type": "string", "pattern": "^[0-9]{1,18}$", "description": "The id of the last event received"}
STREAM = {
    "type": "string",
    "description": (
        "Server-Sent Events: `retry:`, then events `id:`, `event:` (lease.revoked, lease.released, "
        "server.removed, pool.changed, keys.rotated, ready, resync) and one `data:` line of JSON "
        "{type, id, timestamp, data}; a `: keep-alive` comment (with an `id:` line when the resume "
        "point moved) every stream_heartbeat_seconds. Resume with Last-Event-ID (docs/push.md)."
    ),
}


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID", request.query.get("last_event_id"))
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ValidationFailed([{"field": "Last-Event-ID", "message": "must be an event id (digits) from this stream"}])
    return int(raw)


def _frame(kind: str, ident: int, payload: dict[str, object]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"id: {ident}\nevent: {kind}\ndata: {data}\n\n".encode()


def _event_frame(event: Event) -> bytes:
    return _frame(event.type, event.id, event.payload())


@route(
    "GET",
    "/v1/stream",
    summary="Server-Sent Events for this server: revocations, removal, pool and key changes",
    tag="agent",
    auth=("server",),
    responses={200: STREAM},
    query={"last_event_id": EVENT_ID},
    headers={"Last-Event-ID": EVENT_ID},
    media="text/event-stream",
)
async def stream(request: web.Request) -> web.StreamResponse:
    server = await authenticate(request, ("server",))
    after = _last_event_id(request)
    svc = services(request)
    # The server as the database has it now: one removed or moved to another pool through
    # another worker or replica must not open a stream on what this one cached.
    current = await svc.principals.fresh(server.token_hash)
    if current is None:
        raise Unauthenticated("The token is unknown or has been revoked.")
    server = current
    hub = request.app[HUB]
    server_id = server.server_id or ""
    # Subscribed before the backlog is read: whatever commits in between arrives through
    # the hub as well, and is sent once (ids only grow).
    sub = hub.subscribe(server_id, server.pool_id)
    try:
        owed = partial(events.backlog, server_id=server_id, pool_id=server.pool_id, after=after)
        backlog = await svc.store.read(owed)
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: pass each event on at once
                "X-Content-Type-Options": "nosniff",
                "X-Request-Id": request[REQUEST_ID],
                # How often a heartbeat comes at the least: a client may take several
                # missed for a dead stream (the agent: three).
                HEARTBEAT_HEADER: f"{svc.config.stream_heartbeat_seconds:g}",
            },
        )
        await response.prepare(request)
        await _send(response, f"retry: {RETRY_MS}\n\n".encode())
        try:
            position, told = await _opening(response, svc, server_id, server.pool_id, after, backlog)
            await _follow(response, hub, sub, position, told, svc.config.stream_heartbeat_seconds)
        except (ConnectionError, TimeoutError):
            pass  # the client went (or stopped reading): nothing to answer it
        return response
    finally:
        hub.unsubscribe(sub)


async def _opening(
    response: web.StreamResponse,
    svc: Services,
    server_id: str,
    pool_id: str | None,
    after: int | None,
    backlog: events.Backlog,
) -> tuple[int, int]:
    """Send what is owed since ``after``. Returns (position, told): every event for the
    server up to ``position`` has been sent; ``told`` is the last id the client was sent."""
    told = after or 0
    while True:
        if backlog.resync or after is None:
            # Nothing owed (a first connection), or what is owed cannot be told (pruned
            # meanwhile, even): the client starts from the head.
            kind = events.RESYNC if backlog.resync else events.READY
            payload: dict[str, object] = {
                "type": kind,
                "id": str(backlog.head),
                "timestamp": format_ts(svc.clock.now()),
                "data": {"server_id": server_id},
            }
            await _send(response, _frame(kind, backlog.head, payload))
            return backlog.head, backlog.head
        for event in backlog.events:
            await _send(response, _event_frame(event))
            told = event.id
        if not backlog.more:
            return max(told, backlog.head), told
        backlog = await svc.store.read(partial(events.backlog, server_id=server_id, pool_id=pool_id, after=told))


async def _follow(
    response: web.StreamResponse, hub: Hub, sub: Subscription, position: int, told: int, heartbeat: float
) -> None:
    """Send the hub's events as they come, and heartbeats between; until the hub closes
    the subscription, the client goes, or the server is removed."""
    while True:
        batch = await sub.next(heartbeat)
        if batch is None:
            return  # shutting down, replaced by a newer stream, or too far behind
        if not batch:
            # Nothing for this server: say so, and move the client's resume point past
            # the events for others (all of which the hub has looked at by now).
            ahead = max(position, hub.head)
            line = b": keep-alive\n" + (f"id: {ahead}\n".encode() if ahead > told else b"") + b"\n"
            await _send(response, line)
            position = told = max(told, ahead)
            continue
        for event in batch:
            if event.id <= position:
                continue  # already sent from the backlog
            await _send(response, _event_frame(event))
            position = told = event.id
            if event.type == events.SERVER_REMOVED:
                return  # its token is dead: nothing more will come for it
            if event.type == events.POOL_CHANGED and event.server_id == sub.server_id:
                sub.pool_id = str(event.data["pool_id"])  # rebound: follow the new pool


async def _send(response: web.StreamResponse, data: bytes) -> None:
    """Write, or give up on a client that does not take it (ends the stream)."""
    async with asyncio.timeout(WRITE_SECONDS):
        await response.write(data)
