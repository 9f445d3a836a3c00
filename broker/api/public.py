"""Public routes (health, keys, the OpenAPI document) and ``/v1/me``."""

from __future__ import annotations

from aiohttp import web

from broker import estates
from broker.api import shapes
from broker.api.http import authenticate, route, services
from broker.api.openapi import document
from broker.errors import Inconsistent


@route(
    "GET",
    "/healthz",
    summary="200 when the database can be written, 503 storage_unavailable while it cannot",
    tag="public",
    responses={200: shapes.HEALTH, 503: shapes.PROBLEM},
)
async def healthz(request: web.Request) -> web.StreamResponse:
    await services(request).store.ping()
    return web.json_response({"status": "ok"})


@route("GET", "/v1/keys", summary="JWKS of the Ed25519 lease-signing keys", tag="public", responses={200: shapes.JWKS})
async def keys(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    return web.json_response(svc.keyring.jwks(svc.clock.now()), headers={"Cache-Control": "max-age=60"})


@route("GET", "/v1/openapi.json", summary="This document", tag="public", responses={200: {"type": "object"}})
async def openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(document())


@route(
    "GET",
    "/v1/me",
    summary="What the presented token is",
    tag="public",
    auth=("operator", "admin", "server"),
    responses={200: shapes.ME},
)
async def me(request: web.Request) -> web.StreamResponse:
    who = await authenticate(request, ("operator", "admin", "server"))
    if who.kind == "operator":
        return web.json_response({"kind": "operator"})
    if who.kind == "server":
        return web.json_response(
            {
                "kind": "server",
                "server_id": who.server_id,
                "name": who.name,
                "estate_id": who.estate_id,
                "pool_id": who.pool_id,
            }
        )
    if who.estate_id is None:
        raise Inconsistent("an admin principal without an estate")
    estate_id = who.estate_id
    estate = await services(request).store.read(lambda tx: estates.get(tx, estate_id))
    return web.json_response(
        {
            "kind": "admin",
            "estate_id": who.estate_id,
            "estate_name": estate["name"],
            "admin_id": who.admin_id,
            "name": who.name,
            "primary": who.primary,
        }
    )
