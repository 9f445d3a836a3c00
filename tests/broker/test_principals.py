"""Token → principal cache: server identities live minutes, and that costs no safety."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from broker.services import SERVICES
from tests.broker.leasing import ONE, make_site
from tests.conftest import Broker


async def test_a_known_server_renews_without_a_token_lookup(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 4, 365, ONE)])
    lease = await broker.call(
        "POST", "/v1/leases", site.server, {"encoder": "ENC-1", "licence_type": ONE, "count": 1}, 201
    )
    store = broker.client.server.app[SERVICES].store
    before = store.stats.read_jobs
    for _ in range(3):
        broker.clock.advance(60)  # agents renew minutes apart, far beyond an admin's 5 s
        await broker.call("POST", f"/v1/leases/{lease['id']}/renew", site.server, {}, 200)
    assert store.stats.read_jobs == before


async def test_a_server_removed_through_another_replica_is_refused_on_every_agent_route(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    config = config_factory()
    one = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    two = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    site = await make_site(one, [("SO-1", 6, 365, ONE)])
    lease = await two.call(
        "POST", "/v1/leases", site.server, {"encoder": "ENC-1", "licence_type": ONE, "count": 2}, 201
    )

    await one.call("DELETE", f"/v1/estates/{site.estate_id}/servers/{site.server_id}", site.admin, status=204)
    clock.advance(60)  # past the admin lifetime, within the server entry's on replica two
    for method, path, body in (
        ("POST", "/v1/leases", {"encoder": "ENC-2", "licence_type": ONE, "count": 1}),
        ("POST", f"/v1/leases/{lease['id']}/renew", {}),
        ("DELETE", f"/v1/leases/{lease['id']}", None),
    ):
        answer = await two.call(method, path, site.server, body, 401)
        assert answer["code"] == "unauthenticated", (method, path)
    assert (await site.pool())["in_use"] == 0
    # In the replica that removed it, even /v1/me knows at once.
    await one.call("GET", "/v1/me", site.server, status=401)
