"""Fixtures for the agent's tests: a real broker, a shared manual clock, a real agent.

The broker is the real application on a real SQLite file, served over TCP on 127.0.0.1;
the agent talks to it through ``Proxy`` (a plain forwarding HTTP server) so that a test can
cut the broker off (an outage) or alter its answers (a tampered token) without touching
either side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.config import Config
from agent.daemon import Service
from agent.enroll import enroll
from agent.keeper import Keeper
from agent.sdnotify import Notifier
from broker.app import create_app
from broker.config import load as load_broker_config
from broker.ids import new_token
from shared.timefmt import format_ts

# 2027-01-01T00:00:00Z
T0 = 1_798_761_600.0
DAY = 86400
LT = "one-in-one-out"


class FakeClock:
    """One clock for the broker (``now``) and the agent (``now`` and ``sleep``).

    Time moves only in ``advance``; sleepers whose time has come are woken in order.
    """

    def __init__(self, start: float = T0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    @property
    def next_wake(self) -> float | None:
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own time; then let tasks run."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self._now = max(self._now, deadline)
            future.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def eventually(
    condition: Callable[[], bool], *, within: float = 15.0, what: str = "condition"
) -> None:
    """Wait (real time, briefly) for work in flight, e.g. an HTTP round trip, to land."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- broker


@dataclass
class LiveBroker:
    """The real broker, served on 127.0.0.1, plus operator and admin helpers."""

    url: str
    operator: str
    clock: FakeClock
    session: aiohttp.ClientSession
    data_dir: Path = Path()
    estate_id: str = ""
    admin: str = ""
    default_pool: str = ""
    purchases: list[str] = field(default_factory=list)

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None,
        status: int | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.url + path, json=body, headers=headers
        ) as resp:
            data = await resp.json() if resp.status != 204 else None
            if status is not None:
                assert resp.status == status, (resp.status, data)
            return data

    async def setup_estate(self, quantity: int = 10, lease_seconds: int = 300) -> None:
        est = await self.call("POST", "/v1/estates", self.operator,
                              {"name": "Acme Broadcast", "admin_name": "Alice"}, 201)
        self.estate_id, self.admin = est["id"], est["admin_token"]
        self.default_pool = est["default_pool_id"]
        await self.buy(quantity)
        await self.call("PATCH", self.pool_path(self.default_pool), self.admin,
                        {"lease_seconds": lease_seconds}, 200)

    async def buy(self, quantity: int, licence_type: str = LT, sales_order: str = "SO-1001") -> str:
        purchase = await self.call(
            "POST", f"/v1/estates/{self.estate_id}/purchases", self.operator,
            {"sales_order": sales_order, "licence_type": licence_type, "quantity": quantity,
             "expires_at": format_ts(self.clock.now() + 365 * DAY)}, 201)
        self.purchases.append(purchase["id"])
        return str(purchase["id"])

    def pool_path(self, pool: str) -> str:
        return f"/v1/estates/{self.estate_id}/pools/{pool}"

    async def new_pool(self, name: str, count: int, lease_seconds: int = 300) -> str:
        pool = await self.call(
            "POST", f"/v1/estates/{self.estate_id}/pools", self.admin,
            {"name": name, "lease_seconds": lease_seconds,
             "moves": [{"purchase_id": self.purchases[0], "count": count}]}, 201)
        return str(pool["id"])

    async def code(self, pool: str | None = None) -> str:
        made = await self.call(
            "POST", self.pool_path(pool or self.default_pool) + "/auth-codes", self.admin, {}, 201)
        return str(made["code"])

    async def pool(self, pool: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = await self.call(
            "GET", self.pool_path(pool or self.default_pool), self.admin, status=200)
        return data

    async def in_use(self, pool: str | None = None) -> int:
        return int((await self.pool(pool))["in_use"])

    async def leases(self) -> list[dict[str, Any]]:
        data = await self.call("GET", f"/v1/estates/{self.estate_id}/leases", self.admin,
                               status=200)
        return list(data["items"])


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@contextlib.asynccontextmanager
async def serve_broker(data_dir: Path, clock: FakeClock, **settings: Any) -> AsyncIterator[LiveBroker]:
    """The real broker on ``data_dir`` with an estate set up; ``settings`` override its config."""
    operator = new_token("op")
    config = load_broker_config(
        None, env={}, data_dir=data_dir, operator_token=operator,
        clock=clock, sqlite_synchronous="normal", **settings,
    )
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            broker = LiveBroker(f"http://127.0.0.1:{port}", operator, clock, session, data_dir=data_dir)
            await broker.setup_estate()
            yield broker
    finally:
        await runner.cleanup()


@pytest.fixture
async def live_broker(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[LiveBroker]:
    async with serve_broker(tmp_path / "broker", fake_clock) as broker:
        yield broker


# --------------------------------------------------------------------------- proxy


def tamper(token: str) -> str:
    """Change the count claim, keep the signature: what a man in the middle would do."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["n"] = claims["n"] + 1
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


class Proxy:
    """Forwards HTTP to the broker; ``down()`` makes it unreachable, ``tampering`` forges."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tampering = False
        self.requests: list[str] = []
        self.holding = 0
        self._hold: str | None = None
        self._gate = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.requests.append(f"{request.method} {request.path}")
        if self._hold is not None and request.path.endswith(self._hold):
            self.holding += 1
            await self._gate.wait()  # a slow network: the request reaches the broker late
            self.holding -= 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "accept")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=await request.read(),
            headers=headers,
        ) as upstream:
            body = await upstream.read()
            if self.tampering and upstream.status < 300 and body:
                data = json.loads(body)
                if isinstance(data, dict) and isinstance(data.get("token"), str):
                    data["token"] = tamper(data["token"])
                    body = json.dumps(data).encode()
            out = {"Connection": "close"}
            for name in ("Content-Type", "Retry-After"):
                if name in upstream.headers:
                    out[name] = upstream.headers[name]
            return web.Response(status=upstream.status, body=body, headers=out)

    def hold(self, path_suffix: str) -> None:
        """Keep requests whose path ends with ``path_suffix`` until ``let_go()``."""
        self._hold = path_suffix
        self._gate.clear()

    def let_go(self) -> None:
        self._hold = None
        self._gate.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self.up()

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = self._runner.addresses[-1][1]

    async def down(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        self.let_go()
        await self.down()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@pytest.fixture
async def proxy(live_broker: LiveBroker) -> AsyncIterator[Proxy]:
    proxy = Proxy(live_broker.url)
    await proxy.start()
    yield proxy
    await proxy.close()


# --------------------------------------------------------------------------- agent


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


async def enroll_agent(
    config: Config, broker_url: str, code: str, *, name: str = "enc-host-7",
    domain: str | None = None,
) -> None:
    await enroll(config, code, broker_url=broker_url, name=name, domain=domain)


@dataclass
class AgentHarness:
    """A running agent service (in-process) and a client for its socket."""

    service: Service
    config: Config
    clock: FakeClock
    session: aiohttp.ClientSession

    @property
    def runner(self) -> Any:
        return self.service.agent.runner

    def keeper(self, encoder: str) -> Keeper:
        keeper = self.runner.get(encoder)
        assert keeper is not None, f"no keeper for {encoder}"
        return keeper  # type: ignore[no-any-return]

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, "http://agent" + path, json=body) as resp:
            return resp.status, (await resp.json() if resp.status != 204 else None)

    async def want(self, encoder: str, count: int, licence_type: str = LT,
                   domain: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"licence_type": licence_type, "count": count}
        if domain:
            body["domain"] = domain
        status, data = await self.call("PUT", f"/v1/encoders/{encoder}/lease", body)
        assert status == 200, data
        return dict(data)

    async def lease(self, encoder: str) -> dict[str, Any]:
        status, data = await self.call("GET", f"/v1/encoders/{encoder}/lease")
        assert status == 200, data
        return dict(data)

    async def wait_state(self, encoder: str, state: str, within: float = 15.0) -> None:
        await eventually(lambda: self.keeper(encoder).state() == state, within=within,
                         what=f"{encoder} to be {state} (is {self.keeper(encoder).state()})")

    async def stop(self) -> None:
        await self.service.stop()


AgentFactory = Callable[..., Awaitable[AgentHarness]]


@pytest.fixture
async def start_agent(
    agent_config: Config, fake_clock: FakeClock
) -> AsyncIterator[AgentFactory]:
    started: list[AgentHarness] = []

    async def start(config: Config | None = None, notifier: Notifier | None = None) -> AgentHarness:
        config = config or agent_config
        service = Service(config, clock=fake_clock, notifier=notifier or Notifier(env={}))
        await service.start()
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(config.socket)))
        harness = AgentHarness(service, config, fake_clock, session)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.session.close()
        if harness.service.server.serving:
            # The broker may be gone by now: stop without releasing.
            await harness.service.server.stop()
            await harness.service.agent.runner.stop(release=False, within=0)
            await harness.service.agent.close()


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
