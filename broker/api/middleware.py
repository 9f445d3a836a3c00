"""Errors as problem+json (RFC 9457); the headers every answer carries; the request
metrics and the access log: all in one middleware, ``every_request`` (one frame and one
pass per request, where three middlewares cost three).

The access log is one line per request on logger ``tenure.access`` (setting ``access_log``)
with the request's id, method, route template (never the raw path, never a query, a token,
a code or a body), status, duration, estate and principal. Refusals an operator must see to
notice brute force (a wrong code, a rate-limit trip, a refused console sign-in) are WARNING
lines on ``tenure.http`` whatever ``access_log`` says.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from aiohttp import web

from broker import errors
from broker.api.client import client_ip
from broker.api.http import PRINCIPAL, REQUEST_ID, Handler
from broker.api.metrics import REQUESTS
from broker.services import SERVICES

log = logging.getLogger("tenure.http")
access = logging.getLogger("tenure.access")

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# aiohttp's own HTTP errors (no route, wrong method, body too large) → our problem codes.
_HTTP_CODES = {
    404: (errors.NotFound, "No such resource."),
    405: (errors.TenureError, "Method not allowed for this resource."),
    413: (errors.PayloadTooLarge, "The body is larger than 64 KiB."),
}


def problem(err: errors.TenureError) -> web.Response:
    response = web.json_response(err.problem(), status=err.status, content_type="application/problem+json")
    if isinstance(err, errors.RateLimited):
        response.headers["Retry-After"] = str(err.retry_after)
    return response


@web.middleware
async def every_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What every request goes through, in one middleware (one frame, one pass):
    ``X-Request-Id`` (the client's when sane, else a new one), errors as problem+json,
    the headers of every answer, the request's metrics and its access-log line."""
    start = time.perf_counter()
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _SANE_REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect: aiohttp sends it as raised
            exc.headers["X-Request-Id"] = request_id
            _access_line(request, exc.status, start)
            raise
        response = _http_problem(exc)
    except Exception as exc:
        response = _problem_for(request, exc)
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Cache-Control", "no-store")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers["X-Request-Id"] = request_id
    info = request.match_info.route.resource
    route = info.canonical if info is not None else "unmatched"
    request.app[REQUESTS].observe(request.method, route, response.status, time.perf_counter() - start)
    _access_line(request, response.status, start)
    return response


def _problem_for(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, errors.Inconsistent):
        log.error("inconsistent data on %s %s", request.method, request.path, exc_info=exc)
        return problem(errors.TenureError("Something went wrong on the broker; it is logged."))
    if isinstance(exc, errors.TenureError):
        _warn_refusal(request, exc)
        return problem(exc)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return problem(errors.TenureError("Something went wrong on the broker; it is logged."))


def _http_problem(exc: web.HTTPException) -> web.Response:
    """aiohttp's own HTTP errors (no route, wrong method, body too large) as problems."""
    kind, detail = _HTTP_CODES.get(exc.status, (errors.TenureError, exc.reason))
    err = kind(detail)
    if kind is errors.TenureError:
        err.status, err.code, err.title = (
            exc.status,
            {405: "method_not_allowed"}.get(exc.status, "http_error"),
            exc.reason,
        )
    response = problem(err)
    if exc.status == 405 and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _warn_refusal(request: web.Request, exc: errors.TenureError) -> None:
    """A WARNING for each refusal that, repeated, is someone guessing (never what they sent)."""
    if isinstance(exc, errors.AuthCodeInvalid):
        what = "refused an authentication code"
    elif isinstance(exc, errors.RateLimited):
        what = f"rate limit tripped (retry after {exc.retry_after} s)"
    elif request.match_info.route.name == "console_sign_in" and isinstance(
        exc, errors.Unauthenticated | errors.Forbidden
    ):
        what = f"refused a console sign-in ({exc.code})"
    else:
        return
    fields = _fields(request)
    log.warning("%s from %s on %s %s", what, fields["client"], request.method, fields["route"], extra=fields)


def _fields(request: web.Request) -> dict[str, Any]:
    """What a log line may say about ``request``: ids and names, no secret."""
    resource = request.match_info.route.resource
    principal = request.get(PRINCIPAL)
    svc = request.app.get(SERVICES)
    client = client_ip(request, svc.config.trusted_proxies) if svc is not None else None
    estate = request.match_info.get("estate") or (principal.estate_id if principal else None)
    return {
        "request_id": request.get(REQUEST_ID),
        "method": request.method,
        "route": resource.canonical if resource is not None else "(no route)",
        "client": str(client) if client is not None else None,
        "estate": estate,
        "principal_kind": principal.kind if principal else None,
        "principal_id": principal.actor_id if principal else None,
    }


def _access_line(request: web.Request, status: int, start: float) -> None:
    svc = request.app.get(SERVICES)
    if (svc is not None and not svc.config.access_log) or not access.isEnabledFor(logging.INFO):
        return
    fields = _fields(request)
    fields["status"] = status
    fields["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
    who = f"{fields['principal_kind']}:{fields['principal_id'] or '-'}" if fields["principal_kind"] else "-"
    access.info(
        "%s %s %d %.1f ms %s id=%s",
        request.method,
        fields["route"],
        status,
        fields["duration_ms"],
        who,
        fields["request_id"],
        extra=fields,
    )
