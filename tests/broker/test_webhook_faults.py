"""Webhook delivery rides out a PostgreSQL outage: while the database cannot be reached
the dispatcher's rounds fail and are logged, never ending its loop, and once it is back
the event written before the outage is delivered, without a restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.app import create_app
from broker.clock import ManualClock
from broker.config import Config, load
from broker.services import SERVICES
from broker.webhooks import events
from tests.broker.estate_kit import base, estate
from tests.broker.webhook_kit import Receiver, add_endpoint, hook_settings, hooks_of, listening
from tests.conftest import Broker
from tests.postgres import TEST_SECRET_KEY
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(pg_database: str) -> Iterator[TcpProxy]:
    made = TcpProxy.before(pg_database)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with listening() as found:
        yield found


def _config(data_dir: Path, url: str, operator_token: str, clock: ManualClock, **more: Any) -> Config:
    return load(
        None,
        env={},
        data_dir=data_dir,
        operator_token=operator_token,
        clock=clock,
        database=url,
        secret_key=TEST_SECRET_KEY,
        database_pool_size=4,
        database_timeout_seconds=0.5,
        **hook_settings(**more),
    )


async def test_delivery_resumes_by_itself_after_the_database_returns(
    aiohttp_client: Any,
    tmp_path: Path,
    pg_database: str,
    proxy: TcpProxy,
    clock: ManualClock,
    operator_token: str,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tenure.webhooks")
    clock.set(float(int(time.time())))
    cut_off = _config(tmp_path / "a", proxy.url(pg_database), operator_token, clock, webhook_poll_seconds=0.05)
    b = Broker(await aiohttp_client(create_app(cut_off)), operator_token, clock)
    # Another replica, still reaching the database, writes the event meanwhile.
    other = Broker(
        await aiohttp_client(create_app(_config(tmp_path / "b", pg_database, operator_token, clock))),
        operator_token,
        clock,
    )
    est = await estate(b)
    made = await add_endpoint(b, est, receiver, ["lease.lapsed"])
    proxy.refuse()
    event_id = await other.client.app[SERVICES].store.write(
        lambda tx: events.emit(tx, clock.now(), est.id, events.TEST, {"during": "outage"}, only=made["id"])
    )
    await asyncio.sleep(1.5)  # the cut-off broker's rounds fail meanwhile
    assert receiver.deliveries == []
    assert any("webhook delivery" in r.getMessage() for r in caplog.records)
    proxy.restore()
    for _ in range(100):
        if receiver.deliveries:
            break
        await asyncio.sleep(0.05)
    assert [d.payload["id"] for d in receiver.deliveries] == [event_id] and receiver.unverified == []
    await hooks_of(b).dispatcher.idle()  # the receiver has answered: wait for the record
    listed = await b.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin, status=200)
    assert listed["deliveries"]["delivered"] == 1
