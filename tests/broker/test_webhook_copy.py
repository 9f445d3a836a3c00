"""copy-store takes webhooks along: endpoints, their sealed secrets, pending deliveries
and past attempts; the PostgreSQL broker sends what SQLite had not, signed with the
secret the receiver already holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from broker.app import create_app
from broker.clock import ManualClock
from tests.broker.estate_kit import base, enroll, estate
from tests.broker.test_copy_store import copy_store, pg_count
from tests.broker.webhook_kit import Receiver, add_endpoint, deliver, hook_broker, hook_settings, listening
from tests.conftest import Broker


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with listening() as found:
        yield found


@pytest.mark.sqlite_only  # the source of a copy is a SQLite broker
async def test_copied_webhooks_deliver_from_postgresql(
    aiohttp_client: Any,
    config_factory: Any,
    clock: ManualClock,
    operator_token: str,
    receiver: Receiver,
    empty_database: str,
) -> None:
    source = await hook_broker(aiohttp_client, config_factory, clock, operator_token)
    est = await estate(source)
    made = await add_endpoint(source, est, receiver, ["server.enrolled", "server.removed"])
    await source.purchase(est.id)
    server = await enroll(source, est, est.default_pool)
    await deliver(source)  # one delivered, with its attempt
    await source.call("DELETE", f"{base(est)}/servers/{server['server_id']}", est.admin, status=204)  # pending
    data = source.config.data_dir
    await source.client.close()

    target = empty_database
    done = copy_store(data, target)
    assert done.returncode == 0, done.stderr
    assert pg_count(target, "webhook_endpoints") == 1 and pg_count(target, "webhook_attempts") == 1
    secret = (data / "secret-key").read_text().strip()
    config = config_factory(**hook_settings(database=target, secret_key=secret, data_dir=data.parent / "pg"))
    copied = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    await deliver(copied)
    assert [d.payload["type"] for d in receiver.deliveries] == ["server.enrolled", "server.removed"]
    assert receiver.unverified == []  # the same secret, opened by the same secret key
    listed = await copied.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin)
    assert [a["attempt"] for a in listed["items"]] == [1, 1] and listed["deliveries"]["delivered"] == 2
