"""Fixtures of the reliability tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from tests.conftest import Broker


@pytest.fixture
async def roomy_broker(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> Broker:
    """A broker whose code-failure budget does not get in the way of tests that fail on
    purpose many times from one address (the limit itself is tested with ``broker``)."""
    # Webhooks to loopback allowed: the access matrix gives its estates an endpoint.
    config = config_factory(
        redeem_failures_per_address=100_000, redeem_failures_global=100_000, webhook_allow_private=True
    )
    client = await aiohttp_client(create_app(config))
    return Broker(client, operator_token, clock)
