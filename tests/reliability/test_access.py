"""Who may do what: every route in ``ROUTES`` x every kind of token, exact statuses.

A refused call (401, 403, 404) must also change nothing: the whole database is compared
before and after each route's refusals. Secrets never reach a log record or the
database in clear (invariant 5), and guessing codes runs into the rate limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from broker.api.http import ROUTES
from broker.ids import new_token
from tests.conftest import Broker
from tests.reliability import kit
from tests.reliability.invariants import Reader, check_books, snapshot

TOKENS = (
    "none",
    "garbage",
    "removed_admin",
    "removed_server",
    "operator",
    "admin",
    "secondary_admin",
    "other_admin",
    "server",
    "other_server",
)
KIND = {
    "operator": "operator",
    "admin": "admin",
    "secondary_admin": "admin",
    "other_admin": "admin",
    "server": "server",
    "other_server": "server",
}


@dataclass
class World:
    """One estate with one of everything a route can name, and a second estate."""

    est: kit.Estate
    tokens: dict[str, str | None]
    pool: str  # a custom pool with stock, no servers, no leases
    purchase: str
    lease: str  # held by "server"
    target_server: str  # no leases: can be rebound or removed
    target_admin: str  # a secondary admin that can be removed
    code_id: str
    webhook: str


async def world(broker: Broker) -> World:
    est = await kit.estate(broker)
    bought = await broker.purchase(est.id, "SO-1", quantity=10)
    pool = await kit.pool(broker, est, "Spare", {bought["id"]: 3})
    server = await kit.enrol(broker, est, est.default_pool, "host-1")
    target = await kit.enrol(broker, est, est.default_pool, "host-2")
    removed = await kit.enrol(broker, est, est.default_pool, "host-3")
    await broker.call("DELETE", f"{est.base}/servers/{removed['server_id']}", est.admin, status=204)
    lease = (await kit.acquire(broker, server["server_token"], "ENC-1", 2)).body
    second = await broker.call("POST", f"{est.base}/admins", est.admin, {"name": "Bob"}, 201)
    gone = await broker.call("POST", f"{est.base}/admins", est.admin, {"name": "Eve"}, 201)
    await broker.call("DELETE", f"{est.base}/admins/{gone['id']}", est.admin, status=204)
    target_admin = await broker.call("POST", f"{est.base}/admins", est.admin, {"name": "Carol"}, 201)
    code = await broker.call("POST", f"{est.base}/pools/{pool}/auth-codes", est.admin, {}, 201)
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["purchase.grace_ended"]}  # nothing answers there
    webhook = await broker.call("POST", f"{est.base}/webhooks", est.admin, hook, 201)

    other = await kit.estate(broker, "Other Estate")
    other_bought = await broker.purchase(other.id, "SO-9", quantity=5)
    assert other_bought["id"]
    other_server = await kit.enrol(broker, other, other.default_pool, "their-host")
    tokens: dict[str, str | None] = {
        "none": None,
        "garbage": "tnr_adm_" + "x" * 43,
        "removed_admin": gone["token"],
        "removed_server": removed["server_token"],
        "operator": broker.operator,
        "admin": est.admin,
        "secondary_admin": second["token"],
        "other_admin": other.admin,
        "server": server["server_token"],
        "other_server": other_server["server_token"],
    }
    return World(
        est, tokens, pool, bought["id"], lease["id"], target["server_id"], target_admin["id"], code["id"], webhook["id"]
    )


# handler name -> (path, body, status when allowed)
Request = tuple[str, Any, int]
REQUESTS: dict[str, Callable[[World], Request]] = {
    "enroll": lambda w: ("/v1/enroll", {"code": "0000 0000", "name": "x"}, 403),
    "acquire": lambda w: ("/v1/leases", {"encoder": "ENC-2", "licence_type": kit.ONE, "count": 1}, 201),
    "renew": lambda w: (f"/v1/leases/{w.lease}/renew", {}, 200),
    "release": lambda w: (f"/v1/leases/{w.lease}", None, 204),
    "get_estate": lambda w: (w.est.base, None, 200),
    "list_servers": lambda w: (f"{w.est.base}/servers", None, 200),
    "rebind_server": lambda w: (f"{w.est.base}/servers/{w.target_server}", {"pool_id": w.pool}, 200),
    "remove_server": lambda w: (f"{w.est.base}/servers/{w.target_server}", None, 204),
    "list_admins": lambda w: (f"{w.est.base}/admins", None, 200),
    "add_admin": lambda w: (f"{w.est.base}/admins", {"name": "Dave"}, 201),
    "remove_admin": lambda w: (f"{w.est.base}/admins/{w.target_admin}", None, 204),
    "list_leases": lambda w: (f"{w.est.base}/leases", None, 200),
    "revoke_lease": lambda w: (f"{w.est.base}/leases/{w.lease}", None, 204),
    "list_events": lambda w: (f"{w.est.base}/events", None, 200),
    "verify_chain": lambda w: (f"{w.est.base}/events/chain", None, 200),
    "metrics": lambda w: ("/metrics", None, 200),
    "create_estate": lambda w: ("/v1/estates", {"name": "New", "admin_name": "Zed"}, 201),
    "record_purchase": lambda w: (
        f"{w.est.base}/purchases",
        {"sales_order": "SO-2", "licence_type": kit.ONE, "quantity": 1, "expires_at": "2030-01-01T00:00:00Z"},
        201,
    ),
    "update_purchase": lambda w: (f"{w.est.base}/purchases/{w.purchase}", {"status": "on_hold"}, 200),
    "list_purchases": lambda w: (f"{w.est.base}/purchases", None, 200),
    "list_pools": lambda w: (f"{w.est.base}/pools", None, 200),
    "create_pool": lambda w: (f"{w.est.base}/pools", {"name": "Brand new"}, 201),
    "get_pool": lambda w: (f"{w.est.base}/pools/{w.pool}", None, 200),
    "update_pool": lambda w: (f"{w.est.base}/pools/{w.pool}", {"lease_seconds": 600}, 200),
    "delete_pool": lambda w: (f"{w.est.base}/pools/{w.pool}", None, 204),
    "move": lambda w: (
        f"{w.est.base}/moves",
        {"from_pool": w.est.default_pool, "to_pool": w.pool, "items": [{"purchase_id": w.purchase, "count": 1}]},
        201,
    ),
    "make_code": lambda w: (f"{w.est.base}/pools/{w.pool}/auth-codes", {}, 201),
    "list_codes": lambda w: (f"{w.est.base}/auth-codes", None, 200),
    "revoke_code": lambda w: (f"{w.est.base}/auth-codes/{w.code_id}", None, 204),
    "healthz": lambda w: ("/healthz", None, 200),
    "keys": lambda w: ("/v1/keys", None, 200),
    "openapi": lambda w: ("/v1/openapi.json", None, 200),
    "me": lambda w: ("/v1/me", None, 200),
    "stream": lambda w: ("/v1/stream", None, 200),
    "list_webhooks": lambda w: (f"{w.est.base}/webhooks", None, 200),
    "create_webhook": lambda w: (
        f"{w.est.base}/webhooks",
        {"url": "http://127.0.0.1:9/other", "events": ["server.enrolled"]},
        201,
    ),
    "get_webhook": lambda w: (f"{w.est.base}/webhooks/{w.webhook}", None, 200),
    "delete_webhook": lambda w: (f"{w.est.base}/webhooks/{w.webhook}", None, 204),
    "rotate_webhook_secret": lambda w: (f"{w.est.base}/webhooks/{w.webhook}/rotate-secret", {}, 200),
    "test_webhook": lambda w: (f"{w.est.base}/webhooks/{w.webhook}/test", {}, 202),
    "list_deliveries": lambda w: (f"{w.est.base}/webhooks/{w.webhook}/deliveries", None, 200),
    "pool_usage": lambda w: (f"{w.est.base}/pools/{w.pool}/usage", None, 200),
    "estate_usage": lambda w: (f"{w.est.base}/usage", None, 200),
}
ESTATE_ROUTES = {
    name
    for name, fn in REQUESTS.items()
    if "/v1/estates/{" in next(r.path for r in ROUTES if r.handler.__name__ == name)
}
PRIMARY_ONLY = {"add_admin", "remove_admin"}


def expected(route_name: str, auth: tuple[str, ...], token: str, allowed_status: int) -> tuple[int, str | None]:
    """(status, problem code) that ``token`` must get on the route."""
    if not auth:
        return allowed_status, "auth_code_invalid" if route_name == "enroll" else None
    if token not in KIND:
        return 401, "unauthenticated"
    if KIND[token] not in auth:
        return 403, "forbidden"
    if token == "other_admin" and route_name in ESTATE_ROUTES:
        return 404, "not_found"
    if token == "other_server" and route_name in ("renew", "release"):
        return 404, "not_found"
    if token == "secondary_admin" and route_name in PRIMARY_ONLY:
        return 403, "forbidden"
    return allowed_status, None


def test_every_route_is_in_the_matrix() -> None:
    names = {r.handler.__name__ for r in ROUTES}
    assert names == set(REQUESTS), ("routes missing from the access matrix", names ^ set(REQUESTS))


async def test_access_matrix(roomy_broker: Broker) -> None:
    broker = roomy_broker
    db = Reader(broker.db)
    wrong: list[str] = []
    checked = 0
    try:
        for r in ROUTES:
            name = r.handler.__name__
            if name not in REQUESTS:
                continue
            refused = [t for t in TOKENS if expected(name, r.auth, t, 0)[0] in (401, 403, 404)]
            allowed = [t for t in TOKENS if t not in refused]
            # The refusals share one world, which they must leave exactly as it was.
            w = await world(broker)
            path, body, ok = REQUESTS[name](w)
            before = snapshot(db)
            for token in refused:
                status, code = expected(name, r.auth, token, ok)
                got = await kit.call(broker, r.method, path, w.tokens[token], body)
                checked += 1
                if got.status != status or (code and got.body.get("code") != code):
                    wrong.append(f"{r.method} {r.path} as {token}: {got.status} {got.body}, expected {status} {code}")
            if snapshot(db) != before:
                wrong.append(f"{r.method} {r.path}: a refused call changed the database")
            # Each allowed call gets a world of its own: a success may change it.
            for token in allowed:
                w = await world(broker)
                path, body, ok = REQUESTS[name](w)
                status, code = expected(name, r.auth, token, ok)
                got = await kit.call(broker, r.method, path, w.tokens[token], body)
                checked += 1
                if got.status != status or (code and got.body.get("code") != code):
                    wrong.append(f"{r.method} {r.path} as {token}: {got.status} {got.body}, expected {status} {code}")
    finally:
        db.close()
    assert not wrong, "\n".join(wrong)
    assert checked == len(REQUESTS) * len(TOKENS)
    check_books(broker.db)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "bearer tnr_op_nope",
        "Bearer tnr_srv_\u00e9\u00e9",
        "Bearer " + "A" * 8000,
        "Bearer tnr_adm_x tnr_adm_y",
        "Token abc",
    ],
)
async def test_malformed_authorization_headers_are_401(broker: Broker, header: str) -> None:
    for path in ("/v1/me", "/v1/estates/est_x/pools"):
        resp = await broker.client.get(path, headers={"Authorization": header})
        body = await resp.json()
        assert resp.status == 401 and body["code"] == "unauthenticated", (path, header, resp.status)


async def test_guessing_codes_runs_into_the_rate_limit(broker: Broker) -> None:
    est = await kit.estate(broker)
    await broker.purchase(est.id, "SO-1", quantity=2)
    real = await kit.code(broker, est, est.default_pool)
    guesses = [f"{n:08d}" for n in range(300) if f"{n:08d}" != real]
    answers = await asyncio.gather(
        *(kit.call(broker, "POST", "/v1/enroll", None, {"code": g, "name": "bot"}) for g in guesses)
    )
    counts = {s: sum(1 for a in answers if a.status == s) for s in {a.status for a in answers}}
    assert counts == {403: 10, 429: len(guesses) - 10}, counts
    limited = next(a for a in answers if a.status == 429)
    assert limited.body["code"] == "rate_limited" and int(limited.headers["Retry-After"]) > 0
    # Even the right code is refused while the address is over its budget...
    again = await kit.call(broker, "POST", "/v1/enroll", None, {"code": real, "name": "host"})
    assert again.status == 429
    # ... and works once the window has passed (the settled Retry-After says when).
    broker.clock.advance(int(again.headers["Retry-After"]) - 1)
    assert (await kit.call(broker, "POST", "/v1/enroll", None, {"code": real, "name": "h"})).status == 429
    broker.clock.advance(1)
    again = await kit.call(broker, "POST", "/v1/enroll", None, {"code": real, "name": "host"})
    assert again.status == 201, again.body


def _records_text(records: list[logging.LogRecord]) -> str:
    parts = []
    for rec in records:
        parts.append(rec.getMessage())
        parts.append(repr(rec.args))
        parts.append(repr(rec.__dict__))
        if rec.exc_info and rec.exc_info[1] is not None:
            parts.append(repr(rec.exc_info[1]))
    return "\n".join(parts)


async def test_no_secret_reaches_a_log_or_the_database(roomy_broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    broker = roomy_broker
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [broker.operator]
    est = await kit.estate(broker)
    secrets.append(est.admin)
    bought = await broker.purchase(est.id, "SO-1", quantity=6)
    pool = await kit.pool(broker, est, "Paris", {bought["id"]: 4})
    made = await broker.call(
        "POST", f"{est.base}/pools/{pool}/auth-codes", est.admin, {}, 201, headers={"Idempotency-Key": "k-1"}
    )
    secrets.append(made["code"])
    again = await broker.call(
        "POST", f"{est.base}/pools/{pool}/auth-codes", est.admin, {}, 201, headers={"Idempotency-Key": "k-1"}
    )
    assert again["code"] == made["code"]
    bad = await kit.call(broker, "POST", "/v1/enroll", None, {"code": "1234-5678", "name": "x"})
    assert bad.status == 403
    host = await broker.call(
        "POST", "/v1/enroll", None, {"code": f"{made['code'][:4]} {made['code'][4:]}", "name": "h"}, 201
    )
    secrets.append(host["server_token"])
    reuse = await kit.call(broker, "POST", "/v1/enroll", None, {"code": made["code"], "name": "h2"})
    assert reuse.status == 403
    lease = (await kit.acquire(broker, host["server_token"], "ENC-1", 2)).body
    secrets.append(lease["token"])
    renewed = await broker.call("POST", f"/v1/leases/{lease['id']}/renew", host["server_token"], {}, 200)
    secrets.append(renewed["token"])
    admin2 = await broker.call(
        "POST", f"{est.base}/admins", est.admin, {"name": "Bob"}, 201, headers={"Idempotency-Key": "adm-1"}
    )
    secrets.append(admin2["token"])
    # Failures that carry a token: a wrong kind, a removed admin, a garbage body.
    await kit.call(broker, "GET", f"{est.base}/pools", host["server_token"])
    await broker.call("DELETE", f"{est.base}/admins/{admin2['id']}", est.admin, status=204)
    await kit.call(broker, "GET", f"{est.base}/pools", admin2["token"])
    await kit.call(broker, "POST", "/v1/leases", host["server_token"], data=b"{not json")
    await broker.call("DELETE", f"/v1/leases/{lease['id']}", host["server_token"], status=204)
    await broker.call("DELETE", f"{est.base}/servers/{host['server_id']}", est.admin, status=204)
    await kit.call(broker, "GET", "/v1/me", host["server_token"])
    broker.clock.advance(86400)

    text = _records_text(caplog.records) + caplog.text
    assert caplog.records, "the flow logged nothing at all: the capture is not working"
    for secret in secrets:
        assert secret not in text, f"a secret reached a log record: {secret[:10]}…"
        # The part after the type prefix is what matters; a prefix alone is no secret.
        assert secret[-20:] not in text

    # At rest: tokens are stored only as hashes, codes only as an HMAC (invariant 5). The
    # SQLite files, or everything pg_dump gets out of the PostgreSQL database.
    stored = broker.db.dump()
    assert b"Acme Broadcast" in stored, "the dump does not hold the books: the search below proves nothing"
    for secret in secrets:
        if secret.isdigit():
            for table in ("auth_codes", "events", "servers", "idempotency"):
                for row in broker.db.rows(f"SELECT * FROM {table}"):
                    assert not any(isinstance(v, str) and secret in v for v in row), table
        else:
            assert secret.encode() not in stored, f"a secret is in the database in clear: {secret[:10]}…"


async def test_operator_token_is_never_echoed(broker: Broker) -> None:
    wrong = new_token("op")
    got = await kit.call(broker, "GET", "/v1/me", wrong)
    assert got.status == 401 and wrong not in str(got.body) and wrong not in str(got.headers)
