"""Estate isolation and token kinds, for every route in the table (a new route cannot
slip past: the tests iterate over ``broker.api.http.ROUTES``)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.api.http import ROUTES, Route
from broker.app import create_app
from broker.clock import ManualClock
from tests.broker.estate_kit import Estate, assert_problem, base, enroll, estate, lease, new_pool, raw
from tests.conftest import Broker

EXPIRY = "2030-01-01T00:00:00Z"

# A valid body per route, so that a refusal cannot come from validation instead of scoping.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/estates"): {"name": "Evil", "admin_name": "Mallory"},
    ("POST", "/v1/estates/{estate}/purchases"): {
        "sales_order": "SO-9",
        "licence_type": "one-in-one-out",
        "quantity": 5,
        "expires_at": EXPIRY,
    },
    ("PATCH", "/v1/estates/{estate}/purchases/{purchase}"): {"status": "on_hold"},
    ("POST", "/v1/estates/{estate}/pools"): {"name": "Stolen"},
    ("PATCH", "/v1/estates/{estate}/pools/{pool}"): {"name": "Renamed"},
    ("POST", "/v1/estates/{estate}/moves"): {},  # filled in per victim
    ("POST", "/v1/estates/{estate}/pools/{pool}/auth-codes"): {},
    ("PATCH", "/v1/estates/{estate}/servers/{server}"): {},  # filled in per victim
    ("POST", "/v1/estates/{estate}/admins"): {"name": "Mallory"},
    ("POST", "/v1/estates/{estate}/webhooks"): {"url": "http://127.0.0.1:9/evil", "events": ["server.enrolled"]},
    ("POST", "/v1/enroll"): {"code": "00000000", "name": "x"},
    ("POST", "/v1/leases"): {"encoder": "E9", "licence_type": "one-in-one-out", "count": 1},
    ("POST", "/v1/leases/{lease}/renew"): {},
}

_PARAM = re.compile(r"\{([a-z_]+)\}")


class Victim:
    """Estate B, with something behind every kind of id."""

    est: Estate
    ids: dict[str, str]
    server_token: str

    async def build(self, broker: Broker) -> Victim:
        self.est = await estate(broker, "Victim Estate")
        p = await broker.purchase(self.est.id, "SO-VICTIM", quantity=10)
        paris = await new_pool(broker, self.est, "Paris", [{"purchase_id": p["id"], "count": 6}])
        srv = await enroll(broker, self.est, paris["id"], "victim-host")
        self.server_token = srv["server_token"]
        lse = await lease(broker, srv["server_token"], "E1", 2)
        code = await broker.call("POST", f"{base(self.est)}/pools/{paris['id']}/auth-codes", self.est.admin, {}, 201)
        adm = await broker.call("POST", f"{base(self.est)}/admins", self.est.admin, {"name": "Bob"}, 201)
        hook = {"url": "http://127.0.0.1:9/victim", "events": ["purchase.grace_ended"]}
        webhook = await broker.call("POST", f"{base(self.est)}/webhooks", self.est.admin, hook, 201)
        self.ids = {
            "estate": self.est.id,
            "pool": paris["id"],
            "server": srv["server_id"],
            "lease": lse["id"],
            "code": code["id"],
            "admin": adm["id"],
            "purchase": p["id"],
            "webhook": webhook["id"],
        }
        return self

    def path(self, r: Route) -> str:
        return _PARAM.sub(lambda m: self.ids[m.group(1)], r.path)

    def body(self, r: Route) -> str | None:
        if r.method not in ("POST", "PATCH", "PUT"):
            return None
        body = dict(BODIES.get((r.method, r.path), {}))
        if r.path.endswith("/moves"):
            body = {
                "from_pool": self.ids["pool"],
                "to_pool": self.est.default_pool,
                "items": [{"purchase_id": self.ids["purchase"], "count": 1}],
            }
        if r.path.endswith("/servers/{server}"):
            body = {"pool_id": self.est.default_pool}
        return json.dumps(body)

    async def snapshot(self, broker: Broker) -> list[Any]:
        out = []
        for what in ("pools", "servers", "auth-codes", "admins", "purchases", "leases", "events", "webhooks"):
            out.append(
                await broker.call(
                    "GET",
                    f"{base(self.est)}/{what}?limit=500" if what == "events" else f"{base(self.est)}/{what}",
                    broker.operator,
                    status=200,
                )
            )
        return out


@pytest.fixture
async def broker(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> Broker:
    """The usual broker, with webhooks to loopback allowed: the victim has an endpoint
    (whose receiver never answers: nothing leaves this host)."""
    client = await aiohttp_client(create_app(config_factory(webhook_allow_private=True)))
    return Broker(client, operator_token, clock)


def admin_routes() -> list[Route]:
    """Routes an admin may call on an estate (``/v1/me`` is about the token, not an estate)."""
    return [r for r in ROUTES if "admin" in r.auth and r.path != "/v1/me"]


def routes_without(kind: str) -> list[Route]:
    return [r for r in ROUTES if r.auth and kind not in r.auth]


def test_the_route_table_has_what_we_expect() -> None:
    # Guards the parametrisation itself: if the table were empty these tests would pass.
    assert len(admin_routes()) >= 18
    assert all("{estate}" in r.path for r in admin_routes())
    assert {r.path for r in routes_without("admin")} >= {"/v1/estates", "/v1/leases"}


async def test_another_estates_admin_gets_404_on_every_admin_route(broker: Broker) -> None:
    victim = await Victim().build(broker)
    attacker = await estate(broker, "Attacker Estate")
    before = await victim.snapshot(broker)
    for r in admin_routes():
        path = victim.path(r)
        got = await raw(broker, r.method, path, attacker.admin, victim.body(r))
        body = assert_problem(got, 404, "not_found")
        # Revealing nothing: the answer is the one for an estate that does not exist.
        ghost = await raw(
            broker, r.method, path.replace(victim.est.id, "est_doesnotexist"), attacker.admin, victim.body(r)
        )
        assert ghost.json() == body, r.path
        for secret in ("Victim", "Paris", "SO-VICTIM", "victim-host", "Bob"):
            assert secret not in got.text, (r.path, got.text)
    assert await victim.snapshot(broker) == before


async def test_attacker_with_own_estate_and_victims_object_ids_gets_404(broker: Broker) -> None:
    """Own estate in the path, the victim's pool/server/code/... ids inside it."""
    victim = await Victim().build(broker)
    attacker = await estate(broker, "Attacker Estate")
    await broker.purchase(attacker.id, "SO-ATT", quantity=3)
    before = await victim.snapshot(broker)
    checked = 0
    for r in admin_routes():
        params = set(_PARAM.findall(r.path)) - {"estate"}
        if not params:
            continue
        ids = {**victim.ids, "estate": attacker.id}
        path = _PARAM.sub(lambda m, ids=ids: ids[m.group(1)], r.path)  # type: ignore[misc]
        got = await raw(broker, r.method, path, attacker.admin, victim.body(r))
        assert_problem(got, 404, "not_found")
        checked += 1
    assert checked >= 8
    # Ids of the victim inside bodies: a move from the victim's pool, a rebind to it.
    own = await broker.call("GET", f"{base(attacker)}/pools", attacker.admin, status=200)
    for path, body in (
        (
            "moves",
            {
                "from_pool": victim.ids["pool"],
                "to_pool": attacker.default_pool,
                "items": [{"purchase_id": victim.ids["purchase"], "count": 1}],
            },
        ),
        (
            "moves",
            {
                "from_pool": attacker.default_pool,
                "to_pool": own["items"][0]["id"],
                "items": [{"purchase_id": victim.ids["purchase"], "count": 1}],
            },
        ),
        ("pools", {"name": "Grab", "moves": [{"purchase_id": victim.ids["purchase"], "count": 1}]}),
    ):
        got = await raw(broker, "POST", f"{base(attacker)}/{path}", attacker.admin, json.dumps(body))
        assert got.status in (400, 404), got.text
        assert got.status == 404 or "from_pool" in got.text
    assert await victim.snapshot(broker) == before
    names = await broker.call("GET", f"{base(attacker)}/pools", attacker.admin, status=200)
    assert [p["name"] for p in names["items"]] == ["Default Pool"]


async def test_server_token_is_403_on_every_admin_and_operator_route(broker: Broker) -> None:
    victim = await Victim().build(broker)
    before = await victim.snapshot(broker)
    for r in routes_without("server"):
        got = await raw(broker, r.method, victim.path(r), victim.server_token, victim.body(r))
        assert_problem(got, 403, "forbidden")
    assert await victim.snapshot(broker) == before


async def test_admin_token_is_403_on_operator_and_agent_routes(broker: Broker) -> None:
    victim = await Victim().build(broker)
    before = await victim.snapshot(broker)
    for r in routes_without("admin"):
        got = await raw(broker, r.method, victim.path(r), victim.est.admin, victim.body(r))
        assert_problem(got, 403, "forbidden")
    assert await victim.snapshot(broker) == before


async def test_operator_token_is_403_on_agent_routes(broker: Broker) -> None:
    victim = await Victim().build(broker)
    for r in routes_without("operator"):
        got = await raw(broker, r.method, victim.path(r), broker.operator, victim.body(r))
        assert_problem(got, 403, "forbidden")


@pytest.mark.parametrize("token", [None, "tnr_adm_" + "A" * 43, "garbage"])
async def test_every_authenticated_route_refuses_bad_tokens(broker: Broker, token: str | None) -> None:
    victim = await Victim().build(broker)
    for r in ROUTES:
        if not r.auth:
            continue
        got = await raw(broker, r.method, victim.path(r), token, victim.body(r))
        assert_problem(got, 401, "unauthenticated")


async def test_operator_reaches_every_estate(broker: Broker) -> None:
    victim = await Victim().build(broker)
    pools = await broker.call("GET", f"{base(victim.est)}/pools", broker.operator, status=200)
    assert {p["name"] for p in pools["items"]} == {"Default Pool", "Paris"}
