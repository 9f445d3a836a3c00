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
from shared import jws
from shared.timefmt import format_ts

# 2027-01-01T00:00:00Z
T0 = 1_798_761_600.0
DAY = 86400
LT = "one-in-one-out"


# Where the agent's monotonic clock reads 0: far from any epoch time, so that a deadline
# measured on one clock and compared on the other is wildly off, and a test notices.
MONOTONIC_ORIGIN = T0 - 5_000_000.0


class FakeClock:
    """True time, as the broker (``now``) and the agent's host (``monotonic``, ``wall``) see it.

    Time moves only in ``advance``; sleepers (on monotonic time) whose time has come are
    woken in order. ``step_wall`` steps the host's wall clock alone, as NTP or an operator
    would: neither the broker's clock nor the monotonic clock move.
    """

    def __init__(self, start: float = T0) -> None:
        self._now = start
        self._wall_offset = 0.0
        self._monotonic_origin = MONOTONIC_ORIGIN
        self._boot = 1
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """The broker's clock (true time)."""
        return self._now

    def monotonic(self) -> float:
        return self._now - self._monotonic_origin

    def boot_id(self) -> str:
        return f"boot-{self._boot}"

    def wall(self) -> float:
        """The agent host's clock: true time plus every step so far."""
        return self._now + self._wall_offset

    def step_wall(self, seconds: float) -> None:
        self._wall_offset += seconds

    def reboot(self) -> None:
        """The host rebooted: monotonic time starts again near zero, under a new boot id."""
        self._boot += 1
        self._monotonic_origin = self._now - 20.0

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    @property
    def sleeping(self) -> int:
        """How many tasks are waiting on this clock."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

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
    server: BrokerServer | None = None

    async def stop(self) -> None:
        """Stop the broker (its listening socket, its database, its background tasks)."""
        assert self.server is not None
        await self.server.stop()

    async def start(self) -> None:
        """Start it again on the same port and data directory, as after a restart."""
        assert self.server is not None
        await self.server.start()

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


class BrokerServer:
    """The real broker application on 127.0.0.1; stopped and started again on the same
    port and data directory, it is the same broker restarted."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        assert self._runner is None
        runner = web.AppRunner(create_app(self.config), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_broker(data_dir: Path, clock: FakeClock, **settings: Any) -> AsyncIterator[LiveBroker]:
    """The real broker on ``data_dir`` with an estate set up; ``settings`` override its config."""
    operator = new_token("op")
    config = load_broker_config(
        None, env={}, data_dir=data_dir, operator_token=operator,
        clock=clock, sqlite_synchronous="normal", **settings,
    )
    server = BrokerServer(config)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            broker = LiveBroker(f"http://127.0.0.1:{server.port}", operator, clock, session,
                                data_dir=data_dir, server=server)
            await broker.setup_estate()
            yield broker
    finally:
        await server.stop()


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


# A key no broker of these tests holds: what another broker's (or a forger's) token is
# signed with.
STRANGER_KEY = jws.SigningKey.generate()


def resign(token: str, key: jws.SigningKey = STRANGER_KEY) -> str:
    """The same claims, signed by ``key`` (and naming its kid): another broker's token."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return jws.sign(claims, key)


@dataclass
class Fault:
    """What the proxy does to requests whose path ends with ``path`` (see ``Proxy.fault``)."""

    path: str
    kind: str
    times: int | None
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    fired: int = 0


FAULT_KINDS = ("drop_request", "drop_answer", "cut_answer", "replace", "resign")


class Proxy:
    """Forwards HTTP to the broker; ``down()`` makes it unreachable, ``tampering`` forges.

    ``hold`` delays requests (before they reach the broker, or after, holding the answer)
    until ``let_go``; ``fault`` makes the network or a broken broker misbehave. An
    upstream that does not answer (a broker stopped) is a 502, as from a real proxy.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tampering = False
        self.requests: list[str] = []
        self.holding = 0
        self.faults: list[Fault] = []
        self._hold: str | None = None
        self._hold_answer = False
        self._gate = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fault(self, path: str, kind: str, *, times: int | None = 1, status: int = 200,
              body: bytes = b"", content_type: str = "application/json") -> Fault:
        """Misbehave on the next ``times`` requests (``None``: until ``clear``) to ``path``.

        ``drop_request``: close the connection once the request is read; the broker never
        sees it. ``drop_answer``: pass it to the broker, then close without an answer.
        ``cut_answer``: pass it on, send the headers (with the full Content-Length) and
        half the body, then close. ``replace``: pass it on, then answer ``status``,
        ``body`` and ``content_type`` instead. ``resign``: pass it on, and sign the
        token in the answer with ``STRANGER_KEY``.
        """
        assert kind in FAULT_KINDS, kind
        made = Fault(path, kind, times, status, body, content_type)
        self.faults.append(made)
        return made

    def clear(self) -> None:
        self.faults.clear()

    def _fault_for(self, path: str) -> Fault | None:
        for f in self.faults:
            if path.endswith(f.path) and (f.times is None or f.fired < f.times):
                f.fired += 1
                return f
        return None

    @staticmethod
    def _cut(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        transport.close()
        raise asyncio.CancelledError  # nothing more to say on a closed connection

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.requests.append(f"{request.method} {request.path}")
        data = await request.read()
        fault = self._fault_for(request.path)
        if fault is not None and fault.kind == "drop_request":
            return self._cut(request)
        held = self._hold is not None and request.path.endswith(self._hold)
        if held and not self._hold_answer:
            self.holding += 1
            await self._gate.wait()  # a slow network: the request reaches the broker late
            self.holding -= 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "accept")}
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, data=data, headers=headers,
            ) as upstream:
                body = await upstream.read()
                status = upstream.status
                passed = {n: upstream.headers[n] for n in ("Content-Type", "Retry-After")
                          if n in upstream.headers}
        except aiohttp.ClientError:
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>",
                                content_type="text/html", headers={"Connection": "close"})
        if held and self._hold_answer:
            self.holding += 1
            await self._gate.wait()  # a slow broker: it has acted, the answer comes late
            self.holding -= 1
        if fault is not None and fault.kind in ("drop_answer", "cut_answer"):
            if fault.kind == "cut_answer":
                response = web.StreamResponse(status=status, headers={
                    **passed, "Content-Length": str(len(body)), "Connection": "close"})
                await response.prepare(request)
                await response.write(body[: len(body) // 2])
            return self._cut(request)
        if fault is not None and fault.kind == "replace":
            return web.Response(status=fault.status, body=fault.body,
                                headers={"Content-Type": fault.content_type, "Connection": "close"})
        if (self.tampering or (fault is not None and fault.kind == "resign")) and status < 300 and body:
            data = json.loads(body)
            if isinstance(data, dict) and isinstance(data.get("token"), str):
                data["token"] = tamper(data["token"]) if self.tampering else resign(data["token"])
                body = json.dumps(data).encode()
        return web.Response(status=status, body=body, headers={**passed, "Connection": "close"})

    def hold(self, path_suffix: str, *, answer: bool = False) -> None:
        """Keep requests whose path ends with ``path_suffix`` until ``let_go()``.

        With ``answer``, the broker gets the request at once and its answer is kept.
        """
        self._hold = path_suffix
        self._hold_answer = answer
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

    async def idle(self, within: float = 15.0) -> None:
        """Wait (real time) until every keeper waits on the clock, none on the broker.

        Moving the clock while a keeper is mid-request would let its next timer start
        from the moved time: tests that advance step by step call this between steps.
        """

        def waiting() -> bool:
            busy = [k for k in self.runner.keepers.values()
                    if k.task is not None and not k.task.done()
                    and not (k.record.held is None and k.record.halted is not None)]
            return self.clock.sleeping >= len(busy)

        await eventually(waiting, within=within, what="the keepers to be idle")

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
