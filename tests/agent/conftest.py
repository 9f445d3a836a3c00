"""Fixtures for the agent's tests, each a thin wrapper over ``tests/agent/harness.py``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.config import Config
from shared.sdnotify import Notifier
from tests.agent.harness import AgentFactory, AgentHarness, FakeClock, LiveBroker, serve_broker
from tests.agent.harness import (
    start_agent as start_agent_harness,
)
from tests.agent.proxy import Proxy


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def live_broker(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[LiveBroker]:
    async with serve_broker(tmp_path / "broker", fake_clock) as broker:
        yield broker


@pytest.fixture
async def proxy(live_broker: LiveBroker) -> AsyncIterator[Proxy]:
    proxy = Proxy(live_broker.url)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ta-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent_config(tmp_path: Path, short_dir: Path) -> Config:
    return Config(
        state_dir=tmp_path / "agent-state",
        socket=short_dir / "agent.sock",
        retry_initial=1.0,
        retry_max=10.0,
        stop_timeout=5.0,
        request_timeout=5.0,
    )


@pytest.fixture
async def start_agent(agent_config: Config, fake_clock: FakeClock) -> AsyncIterator[AgentFactory]:
    """Start agents (on ``agent_config`` unless told otherwise); closed after the test."""
    started: list[AgentHarness] = []

    async def start(config: Config | None = None, notifier: Notifier | None = None) -> AgentHarness:
        harness = await start_agent_harness(config or agent_config, fake_clock, notifier)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.close()


@pytest.fixture
def agent_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An empty config file, so that nothing from /etc or the caller leaks in."""
    config = tmp_path / "agent.toml"
    config.write_text("# empty: every setting comes from its default or a flag\n")
    for name in list(os.environ):
        if name.startswith("TENURE_AGENT_") or name == "NOTIFY_SOCKET":
            monkeypatch.delenv(name)
    monkeypatch.setenv("TENURE_AGENT_CONFIG", str(config))
    return {**os.environ, "TENURE_AGENT_CONFIG": str(config)}
