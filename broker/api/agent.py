"""Agent routes: redeem a code, then acquire, renew and release leases."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from broker import codes, leases, policies
from broker.api import shapes
from broker.api.client import client_ip
from broker.api.http import (
    answer,
    authenticate,
    parse_json,
    read_body,
    route,
    services,
)
from broker.api.path import path_id
from broker.api.schema import LICENCE_TYPE, NAME, SERIAL, integer, obj
from broker.api.webhooks import WEBHOOKS
from broker.errors import AuthCodeInvalid, LeaseGone, PoolExhausted
from broker.principal import Principal
from broker.services import Services
from broker.store.relay import relayed
from shared import jws

ENROL = obj(
    {"code": {"type": "string", "minLength": 1, "maxLength": 32}, "name": NAME},
    {"kind": {"type": "string", "enum": ["server", "domain"]}},
)
ACQUIRE = obj(
    {"encoder": SERIAL, "licence_type": LICENCE_TYPE, "count": integer(0, 10_000)},
    {"encoder_kind": {"type": "string", "enum": list(policies.KINDS)}},
)
RENEW = obj({})


@route(
    "POST",
    "/v1/enroll",
    summary="Redeem an 8-digit code: bind a server or domain to a pool",
    tag="agent",
    body=ENROL,
    responses={201: shapes.ENROLLED},
)
async def enroll(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    # Only a request read in full and valid is an attempt: a body that never finishes
    # (or is not JSON) holds no budget and cannot delay or refuse anyone else's code.
    body = parse_json(await read_body(request), ENROL)
    client = client_ip(request, svc.config.trusted_proxies)
    # The attempt counts against the budgets while in flight, so that a burst of
    # concurrent guesses cannot all pass the check before the first failure lands.
    await svc.limiter.begin(client)
    failed = False
    try:
        # The clock is read inside the transaction, not before the body arrived: a code
        # that expires while a slow request is in flight is expired when it is used.
        result = await svc.store.write(
            lambda tx: codes.redeem(
                tx, svc.clock.now(), svc.code_key, body["code"], body["name"], body.get("kind", "server")
            )
        )
    except AuthCodeInvalid:
        failed = True
        svc.counters.codes_refused += 1
        raise
    finally:
        await svc.limiter.finish(client, failed=failed)
    svc.counters.codes_redeemed += 1
    result["keys"] = svc.keyring.jwks(svc.clock.now())
    return answer(201, result)


def _bare(server: Principal) -> Principal:
    """The principal without this request's credential: what a relayed job may carry."""
    return dataclasses.replace(server, credential=None)


def _signed(svc: Services, grant: leases.Grant) -> dict[str, object]:
    claims = {"iss": svc.issuer, **grant.claims()}
    return grant.render(jws.sign(claims, svc.keyring.current))


@route(
    "POST",
    "/v1/leases",
    summary="Acquire, grow, shrink or (count 0) release an encoder's lease",
    tag="agent",
    auth=("server",),
    body=ACQUIRE,
    responses={200: shapes.LEASE, 201: shapes.LEASE, 204: None},
)
async def acquire(request: web.Request) -> web.StreamResponse:
    server = await authenticate(request, ("server",))
    body = parse_json(await read_body(request), ACQUIRE)
    svc = services(request)
    now = svc.clock.now()
    # One lane per estate: its acquires all change its holding rows (broker.store.base).
    try:
        grant = await svc.store.write(
            relayed(
                leases.acquire,
                now=now,
                server=_bare(server),
                encoder=body["encoder"],
                licence_type=body["licence_type"],
                count=body["count"],
                encoder_kind=body.get("encoder_kind", "hardware"),
            ),
            lane=server.estate_id,
        )
    except PoolExhausted as exc:
        if server.estate_id is not None and server.pool_id is not None:
            await request.app[WEBHOOKS].acquire_refused(
                server.estate_id,
                server.pool_id,
                body["licence_type"],
                requested=int(exc.extra.get("requested", body["count"])),
                available=int(exc.extra.get("available", 0)),
                server_id=server.server_id,
                encoder=body["encoder"],
            )
        raise
    if grant is None:
        return answer(204, None)
    return answer(201 if grant.created else 200, _signed(svc, grant))


@route(
    "POST",
    "/v1/leases/{lease}/renew",
    summary="Renew a lease: a new token, a later expiry",
    tag="agent",
    auth=("server",),
    body=RENEW,
    responses={200: shapes.LEASE},
)
async def renew(request: web.Request) -> web.StreamResponse:
    server = await authenticate(request, ("server",))
    lease_id = path_id(request, "lease")
    parse_json(await read_body(request), RENEW)
    svc = services(request)
    now = svc.clock.now()
    outcome = await svc.store.write(
        relayed(leases.renew, now=now, server=_bare(server), lease_id=lease_id), lane=server.estate_id
    )
    if isinstance(outcome, leases.Gone):
        raise LeaseGone(outcome.reason)
    return answer(200, _signed(svc, outcome))


@route(
    "DELETE",
    "/v1/leases/{lease}",
    summary="Release a lease (idempotent)",
    tag="agent",
    auth=("server",),
    responses={204: None},
)
async def release(request: web.Request) -> web.StreamResponse:
    server = await authenticate(request, ("server",))
    lease_id = path_id(request, "lease")
    svc = services(request)
    now = svc.clock.now()
    await svc.store.write(
        relayed(leases.release, now=now, server=_bare(server), lease_id=lease_id), lane=server.estate_id
    )
    return answer(204, None)
