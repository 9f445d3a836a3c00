"""``/v1/openapi.json`` (OpenAPI 3.1), written from the route table itself."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from broker.api import shapes

_PARAM = re.compile(r"\{([a-z_]+)\}")
_STATUS_TEXT = {200: "OK", 201: "Created", 204: "No content", 503: "Storage unavailable"}
_ERRORS = {
    400: "validation_error: malformed JSON, wrong type, missing or unknown field, out of range",
    401: "unauthenticated: no token, or an unknown or revoked one",
    403: "forbidden: a token of the wrong kind (or auth_code_invalid)",
    404: "not_found: unknown id, or an id of another estate",
    409: (
        "conflict: licences_in_use, pool_exhausted, licence_type_not_in_pool (types: those the pool holds),"
        " name_taken, pool_not_empty, server_limit (past a server's max), reservation_exceeds_pool"
        " (reservations above the pool's holding), ..."
    ),
    410: "lease_gone: the lease was released, revoked or lapsed",
    413: "payload_too_large: body over 64 KiB",
    422: "idempotency_key_reused: the same key with a different request",
    429: "rate_limited: too many failed code attempts (see Retry-After)",
    503: (
        "storage_unavailable: the database cannot be written; nothing was changed"
        " (or shutting_down: the broker stopped before the body arrived)"
    ),
}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    from broker.api.http import ROUTES

    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "operationId": r.handler.__name__,
            "summary": r.summary,
            "tags": [r.tag],
            "responses": {},
        }
        params = [
            {
                "name": n,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            }
            for n in _PARAM.findall(r.path)
        ]
        params += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in r.query.items()]
        params += [{"name": n, "in": "header", "required": False, "schema": s} for n, s in r.headers.items()]
        if r.idempotent:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            )
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": r.body}}}
        if r.auth:
            op["security"] = [{"bearer": []}]
            op["description"] = "Tokens: " + ", ".join(r.auth) + "."
        for status, schema in sorted(r.responses.items()):
            entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "OK")}
            if schema is not None and status < 300:
                entry["content"] = {r.media: {"schema": schema}}
                if r.csv:
                    entry["content"]["text/csv"] = {
                        "schema": {
                            "type": "string",
                            "description": "A header row (" + ",".join(r.csv) + "), then "
                            "one row per item, RFC 4180; a cell that begins with =, +, -, @, tab or carriage return "
                            "is prefixed with a single quote. Asked for with Accept: text/csv; every page, streamed.",
                        }
                    }
            elif schema is not None:
                entry["content"] = {"application/problem+json": {"schema": schema}}
            op["responses"][str(status)] = entry
        for status, text in _ERRORS.items():
            op["responses"].setdefault(
                str(status), {"description": text, "content": {"application/problem+json": {"schema": shapes.PROBLEM}}}
            )
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tenure licence broker",
            "version": "1",
            "description": "Estates, pools, authentication codes and signed leases.",
        },
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
