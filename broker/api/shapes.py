"""Response shapes, for the OpenAPI document (and the tests that hold answers to them)."""

from __future__ import annotations

from broker.api.schema import ID, TIMESTAMP, Schema


def shape(props: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required}


def page_of(item: Schema) -> Schema:
    return shape({"items": {"type": "array", "items": item}, "next": {"type": ["string", "null"]}}, ["items"])


def list_of(item: Schema) -> Schema:
    return shape({"items": {"type": "array", "items": item}})


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
NULLABLE_TS: Schema = {"type": ["string", "null"], "format": "date-time"}
PURCHASE_STATE: Schema = {"type": "string", "enum": ["valid", "expiring", "expired", "ended", "on_hold"]}

PROBLEM = shape(
    {"type": STR, "title": STR, "status": INT, "code": STR, "detail": STR}, ["title", "status", "code", "detail"]
)
ESTATE = shape({"id": ID, "name": STR, "default_pool_id": ID, "admin_id": ID, "admin_token": STR})
PURCHASE = shape(
    {
        "id": ID,
        "sales_order": STR,
        "licence_type": STR,
        "quantity": INT,
        "expires_at": TIMESTAMP,
        "status": {"type": "string", "enum": ["valid", "on_hold"]},
        "state": PURCHASE_STATE,
        "grace_ends_at": TIMESTAMP,
    }
)
COUNTS = shape({"allocated": INT, "in_use": INT, "available": INT, "soft_locked": INT, "reserved": INT})
NULLABLE_INT: Schema = {"type": ["integer", "null"]}
ENCODER_KIND: Schema = {"type": "string", "enum": ["hardware", "container"]}
# Seats held for one encoder (of one licence type) until its soft-lock window ends.
SOFT_LOCK = shape(
    {"encoder": STR, "kind": ENCODER_KIND, "licence_type": STR, "count": INT, "until": TIMESTAMP, "lease_id": ID}
)
# A server's limits for one licence type: ``max`` (null: no cap) and ``reserved``.
LIMIT = shape({"max": NULLABLE_INT, "reserved": INT})
POOL_LIMIT = shape(
    {
        "server_id": ID,
        "server_name": STR,
        "licence_type": STR,
        "max": NULLABLE_INT,
        "reserved": INT,
        "in_use": INT,
    }
)
HOLDING = shape(
    {
        "purchase_id": ID,
        "sales_order": STR,
        "licence_type": STR,
        "expires_at": TIMESTAMP,
        "state": PURCHASE_STATE,
        "allocated": INT,
        "in_use": INT,
        "soft_locked": INT,
        "unused": INT,
    }
)
POOL = shape(
    {
        "id": ID,
        "name": STR,
        "is_default": BOOL,
        "lease_seconds": INT,
        "soft_lock_seconds": shape({"hardware": INT, "container": INT}),
        "created_at": TIMESTAMP,
        "allocated": INT,
        "in_use": INT,
        "available": INT,
        "soft_locked": INT,
        "reserved": INT,
        "revoked_unexpired": INT,
        "by_type": {"type": "object", "additionalProperties": COUNTS},
        "holdings": {"type": "array", "items": HOLDING},
        "soft_locks": {"type": "array", "items": SOFT_LOCK},
        "limits": {"type": "array", "items": POOL_LIMIT},
    }
)
MOVE_ITEM = shape({"purchase_id": ID, "count": INT})
MOVE = shape(
    {"id": ID, "from_pool": ID, "to_pool": ID, "items": {"type": "array", "items": MOVE_ITEM}, "at": TIMESTAMP}
)
NEW_CODE = shape(
    {"id": ID, "code": {"type": "string", "pattern": "^[0-9]{8}$"}, "pool_id": ID, "expires_at": TIMESTAMP}
)
CODE = shape(
    {"id": ID, "pool_id": ID, "pool_name": STR, "created_at": TIMESTAMP, "expires_at": TIMESTAMP, "created_by": STR}
)
SERVER = shape(
    {
        "id": ID,
        "name": STR,
        "kind": {"type": "string", "enum": ["server", "domain"]},
        "pool_id": ID,
        "enrolled_at": TIMESTAMP,
        "last_seen_at": NULLABLE_TS,
        "in_use": INT,
        "leases": INT,
        "limits": {"type": "object", "additionalProperties": LIMIT},
    }
)
ADMIN = shape({"id": ID, "name": STR, "primary": BOOL, "created_at": TIMESTAMP})
NEW_ADMIN = shape({"id": ID, "name": STR, "primary": BOOL, "token": STR})
EVENT = shape(
    {
        "id": STR,
        "at": TIMESTAMP,
        "actor": shape({"kind": STR, "id": {"type": ["string", "null"]}, "name": {"type": ["string", "null"]}}),
        "action": STR,
        "pool_id": {"type": ["string", "null"]},
        "subject_id": {"type": ["string", "null"]},
        "details": {"type": "object"},
        # The estate's hash chain (docs/design.md, "Audit log"); null only for an event a
        # broker before the chain wrote, until a broker of this version has started.
        "prev_hash": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        "hash": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
    }
)
CHAIN = shape(
    {
        # Whole so far: no broken link among the events checked (more may follow: ``next``).
        "whole": BOOL,
        "checked": INT,
        # The last event found whole, with its hash: note it to prove the log later.
        "last": {"type": ["object", "null"], "properties": {"id": STR, "hash": STR}},
        "broken": {"type": ["object", "null"], "properties": {"id": STR, "reason": STR}},
        "next": {"type": ["string", "null"]},
    }
)
ADMIN_LEASE = shape(
    {
        "id": ID,
        "pool_id": ID,
        "server_id": ID,
        "server_name": STR,
        "encoder": STR,
        "licence_type": STR,
        "count": INT,
        "created_at": TIMESTAMP,
        "renewed_at": TIMESTAMP,
        "expires_at": TIMESTAMP,
        "encoder_kind": {"type": ["string", "null"], "enum": ["hardware", "container", None]},
        # The end of the encoder's soft-lock window in its pool ("Newly added until …"),
        # null when no window is open.
        "soft_lock_until": NULLABLE_TS,
    }
)
SEAT = shape({"purchase_id": ID, "sales_order": STR, "count": INT, "expires_at": TIMESTAMP, "state": PURCHASE_STATE})
LEASE = shape(
    {
        "id": ID,
        "token": STR,
        "encoder": STR,
        "licence_type": STR,
        "count": INT,
        "pool_id": ID,
        "expires_at": TIMESTAMP,
        "renew_after": TIMESTAMP,
        "lease_seconds": INT,
        "server_time": TIMESTAMP,
        "state": PURCHASE_STATE,
        "seats": {"type": "array", "items": SEAT},
    }
)
JWKS = shape(
    {"keys": {"type": "array", "items": shape({"kty": STR, "crv": STR, "x": STR, "kid": STR, "alg": STR, "use": STR})}}
)
ENROLLED = shape(
    {
        "server_id": ID,
        "server_token": STR,
        "name": STR,
        "kind": {"type": "string", "enum": ["server", "domain"]},
        "estate_id": ID,
        "estate_name": STR,
        "pool_id": ID,
        "pool_name": STR,
        "keys": JWKS,
    }
)
ME = shape({"kind": {"type": "string", "enum": ["operator", "admin", "server"]}}, ["kind"])
SUMMARY = shape(
    {
        "by_type": {
            "type": "object",
            "additionalProperties": shape(
                {
                    "total": INT,
                    "in_use": INT,
                    "available": INT,
                    "soft_locked": INT,
                    "expiring": INT,
                    "unavailable": INT,
                }
            ),
        }
    }
)
HEALTH = shape({"status": STR})
USAGE_POINT = shape({"at": TIMESTAMP, "allocated": INT, "in_use": INT, "available": INT})
USAGE_SERIES = shape({"points": {"type": "array", "items": USAGE_POINT}, "peak_in_use": INT})
POOL_USAGE = shape({"pool_id": ID, "step": INT, **USAGE_SERIES["properties"]})
ESTATE_USAGE = shape(
    {"estate_id": ID, "step": INT, "by_type": {"type": "object", "additionalProperties": USAGE_SERIES}}
)
