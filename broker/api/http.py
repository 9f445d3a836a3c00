"""HTTP plumbing shared by the route modules: the route table, bodies, auth, answers.

Each route is declared once with ``@route(...)``; the declaration carries its request
and response schemas, so the same table registers the handlers and writes
``/v1/openapi.json``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from broker import idempotency, paging
from broker.api.schema import ID_PATTERN, Schema, validate
from broker.errors import Forbidden, Inconsistent, PayloadTooLarge, TenureError, Unauthenticated, ValidationFailed
from broker.ids import token_hash
from broker.principal import Principal
from broker.services import SERVICES, Services
from broker.stopping import ShuttingDown

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: tuple[str, ...]
    body: Schema | None
    responses: dict[int, Schema | None]
    query: dict[str, Schema] = field(default_factory=dict)
    idempotent: bool = False
    headers: dict[str, Schema] = field(default_factory=dict)
    media: str = "application/json"  # of the success answers' bodies
    csv: tuple[str, ...] = ()
    """The columns of the answer to ``Accept: text/csv``; empty when the route speaks JSON only."""


ROUTES: list[Route] = []


def route(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    auth: tuple[str, ...] = (),
    body: Schema | None = None,
    responses: dict[int, Schema | None] | None = None,
    query: dict[str, Schema] | None = None,
    idempotent: bool = False,
    headers: dict[str, Schema] | None = None,
    media: str = "application/json",
    csv: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.append(
            Route(
                method,
                path,
                handler,
                summary,
                tag,
                auth,
                body,
                responses or {200: None},
                query or {},
                idempotent,
                headers or {},
                media,
                csv,
            )
        )
        return handler

    return register


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def answer(status: int, payload: Any) -> web.Response:
    if status == 204 or payload is None:
        return web.Response(status=204)
    return web.json_response(payload, status=status, dumps=_dumps)


# One encoder and one decoder, built once: ``json.dumps``/``loads`` given any argument
# build a new one per call (measured: 5.0 -> 4.0 us to encode a lease answer, 3.3 ->
# 1.9 us to decode an acquire body).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class RequestTimeout(TenureError):
    status, code, title = 408, "request_timeout", "The request body arrived too slowly"


async def read_body(request: web.Request) -> bytes:
    """The whole body, within ``body_timeout_seconds``: else 408 and the connection closes.

    A client that sends its headers and then stalls would otherwise hold a handler (and
    whatever it holds) for as long as the connection lives. A body still on its way is
    counted, so that a stop lets it arrive first (``broker.stopping``).
    """
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"The body is larger than {MAX_BODY // 1024} KiB.")
    try:
        if request.content.is_eof():  # it came with the headers, as nearly every one does
            return await request.read()
        return await _arriving(request)
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"The body is larger than {MAX_BODY // 1024} KiB.") from exc


async def _arriving(request: web.Request) -> bytes:
    svc = services(request)
    if svc.bodies.closed:  # aiohttp reads nothing more: the body could only time out
        _read_no_more(request)
        raise ShuttingDown("The broker is stopping and did not read this request; send it again.")
    limit = svc.config.body_timeout_seconds
    svc.bodies.begin()
    try:
        async with asyncio.timeout(limit):
            return await request.read()
    except TimeoutError as exc:
        _read_no_more(request)
        raise RequestTimeout(f"The request body did not arrive within {limit:g} seconds; send it again.") from exc
    finally:
        svc.bodies.end()


def _read_no_more(request: web.Request) -> None:
    """The rest of the body may yet come, and nothing after it could be told apart from a
    new request: read nothing more, do not linger for it (end the body here), and close
    the connection once the answer is written."""
    request.protocol.close()
    request.content.feed_eof()


def parse_json(raw: bytes, schema: Schema) -> dict[str, Any]:
    if not raw.strip():
        value: Any = {}
    else:
        try:
            # As json.loads(bytes) reads them: UTF-8, -16 or -32, lone surrogates kept.
            value = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
        except (ValueError, RecursionError) as exc:
            raise ValidationFailed(
                [{"field": "", "message": "the body is not valid JSON"}],
                "The body is not valid JSON.",
            ) from exc
    if not isinstance(value, dict):
        raise ValidationFailed([{"field": "", "message": "the body must be a JSON object"}])
    return validate(value, schema)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_ASCII_DIGITS = re.compile("[0-9]{1,18}")
_TOO_BIG = 10**19  # beyond every range the API accepts


def _int(text: str) -> int:
    # Python will not parse an integer of over 4300 digits (and a long one costs time);
    # anything over 19 digits is out of every range here, so it stands in as "too big",
    # and the answer names the field rather than calling valid JSON invalid.
    if len(text) > 20:
        return -_TOO_BIG if text.startswith("-") else _TOO_BIG
    return int(text)


def _number(text: str) -> int | float:
    # JSON Schema (and so /v1/openapi.json) counts 8.0 and 8e0 as integers: accept them as such.
    exact = Decimal(text)
    if exact.adjusted() < 19 and exact == exact.to_integral_value():
        return int(exact)
    return float(text)


_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_int=_int, parse_float=_number)


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """A whole-number query parameter in ``lo..hi``; ASCII digits only.

    ``str.isdigit`` admits ``²`` (which ``int`` then refuses) and ``int`` admits ``٣``
    and ``+3``: neither is a number a client meant to send.
    """
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _ASCII_DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise ValidationFailed([{"field": name, "message": f"must be a whole number {lo}-{hi}"}])
    return int(raw)


PAGE_QUERY: dict[str, Schema] = {
    "after": {"type": "string", "pattern": ID_PATTERN},
    "limit": {"type": "integer", "minimum": 1, "maximum": paging.MAX_LIMIT},
}
"""The query parameters of a cursor-paged list (see ``broker.paging``)."""


def page_params(request: web.Request) -> tuple[str, int]:
    """``after`` (the cursor, "" for the first page) and ``limit`` of a paged list."""
    after = query_str(request, "after", PAGE_QUERY["after"]) or ""
    return after, query_int(request, "limit", paging.DEFAULT_LIMIT, 1, paging.MAX_LIMIT)


def query_str(request: web.Request, name: str, schema: Schema) -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    validate({name: raw}, {"type": "object", "properties": {name: schema}})
    return raw


SessionLookup = Callable[[web.Request], Awaitable[tuple[bytes, str] | None]]
SESSION_LOOKUP: web.AppKey[SessionLookup] = web.AppKey("session_lookup")
# Who made the request, for its access-log line (without the credential).
PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
"""Set by ``broker.console.setup``: the token digest behind a console session cookie and
the cookie's raw session id (None when there is no cookie); it raises 401 for a dead
session and 403 ``csrf_failed`` for a state-changing request without the session's CSRF
token."""


async def authenticate(request: web.Request, allowed: tuple[str, ...]) -> Principal:
    """Resolve the bearer token; 401 when missing or unknown, 403 when of the wrong kind.

    Without an Authorization header, a console session cookie stands in for the token.
    The principal returned carries the raw credential for this request only (see
    ``Principal.credential``).
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    lookup = request.app.get(SESSION_LOOKUP)
    session = await lookup(request) if lookup is not None and not header else None
    if session is None and (scheme.lower() != "bearer" or not token):
        raise Unauthenticated("Send a bearer token: Authorization: Bearer <token>.")
    svc = services(request)
    digest, credential = session if session is not None else (token_hash(token), token)
    principal = await _principal(svc, digest)
    request[PRINCIPAL] = principal
    if principal.kind not in allowed:
        raise Forbidden(f"A {principal.kind} token cannot use this route.")
    return dataclasses.replace(principal, credential=credential)


async def _principal(svc: Services, digest: bytes) -> Principal:
    if hmac.compare_digest(digest, svc.operator_hash):
        return Principal(kind="operator", token_hash=digest)
    # The metrics token opens /metrics and nothing else: no route but that one allows "metrics".
    if svc.metrics_hash is not None and hmac.compare_digest(digest, svc.metrics_hash):
        return Principal(kind="metrics", token_hash=digest)
    found = await svc.principals.resolve(digest)
    if found is None:
        raise Unauthenticated("The token is unknown or has been revoked.")
    return found


async def idempotent_write(
    request: web.Request,
    principal: Principal,
    raw: bytes,
    fn: Callable[[Any], idempotency.Answer],
) -> web.Response:
    """Run ``fn(tx)`` in one write transaction, honouring an Idempotency-Key header."""
    svc = services(request)
    key_text = request.headers.get("Idempotency-Key")
    now = svc.clock.now()
    if key_text is None:
        status, payload = await svc.store.write(fn)
        return answer(status, payload)
    if principal.credential is None:
        raise Inconsistent("idempotent_write() needs the principal authenticate() returned")
    key = idempotency.IdempotencyKey.derive(
        key_text, principal.credential, principal.token_hash, request.method, request.path_qs, raw
    )
    status, payload = await svc.store.write(lambda tx: idempotency.run(tx, now, key, lambda: fn(tx)))
    response = answer(status, payload)
    response.headers["Idempotency-Key"] = key_text
    return response
