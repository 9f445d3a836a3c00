"""Errors as problem+json (RFC 9457), and the headers every answer carries."""

from __future__ import annotations

import logging

from aiohttp import web

from broker import errors
from broker.api.http import Handler

log = logging.getLogger("tenure.http")

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
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.Inconsistent:
        log.exception("inconsistent data on %s %s", request.method, request.path)
        return problem(errors.TenureError("Something went wrong on the broker; it is logged."))
    except errors.TenureError as exc:
        return problem(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
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
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(errors.TenureError("Something went wrong on the broker; it is logged."))


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
