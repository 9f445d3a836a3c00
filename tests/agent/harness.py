"""The agent's test harness: a real broker, a shared manual clock, a real agent.

Importable on its own (``tests/agent/conftest.py`` only wraps it in fixtures), so that a
test builds its world explicitly. The broker is the real application on a real SQLite
file, served over TCP on 127.0.0.1; the agent may talk to it through ``Proxy``
(``tests/agent/proxy.py``) so that a test can cut the broker off or alter its answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent.config import Config
from agent.daemon import Daemon
from agent.enroll import enroll
from agent.keeper import Keeper
from agent.runner import Runner
from broker.app import create_app
from broker.config import load as load_broker_config
from broker.ids import new_token
from shared.sdnotify import Notifier
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

    def sleep(self, seconds: float) -> Awaitable[None]:
        # The deadline is fixed when sleep is called, not when the coroutine first runs: a
        # caller that wraps it in a task (``wait_event`` does) may see ``advance`` run in
        # between, and a deadline taken afterwards would land a whole interval too late.
        return self._sleep_until(self._now + seconds)

    async def _sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), future))
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


async def eventually(condition: Callable[[], bool], *, within: float = 15.0, what: str = "condition") -> None:
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
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        status: int | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as resp:
            data = await resp.json() if resp.status != 204 else None
            if status is not None:
                assert resp.status == status, (resp.status, data)
            return data

    async def setup_estate(self, quantity: int = 10, lease_seconds: int = 300) -> None:
        est = await self.call(
            "POST", "/v1/estates", self.operator, {"name": "Acme Broadcast", "admin_name": "Alice"}, 201
        )
        self.estate_id, self.admin = est["id"], est["admin_token"]
        self.default_pool = est["default_pool_id"]
        await self.buy(quantity)
        await self.call("PATCH", self.pool_path(self.default_pool), self.admin, {"lease_seconds": lease_seconds}, 200)

    async def buy(self, quantity: int, licence_type: str = LT, sales_order: str = "SO-1001") -> str:
        purchase = await self.call(
            "POST",
            f"/v1/estates/{self.estate_id}/purchases",
            self.operator,
            {
                "sales_order": sales_order,
                "licence_type": licence_type,
                "quantity": quantity,
                "expires_at": format_ts(self.clock.now() + 365 * DAY),
            },
            201,
        )
        self.purchases.append(purchase["id"])
        return str(purchase["id"])

    def pool_path(self, pool: str) -> str:
        return f"/v1/estates/{self.estate_id}/pools/{pool}"

    async def new_pool(self, name: str, count: int, lease_seconds: int = 300) -> str:
        pool = await self.call(
            "POST",
            f"/v1/estates/{self.estate_id}/pools",
            self.admin,
            {
                "name": name,
                "lease_seconds": lease_seconds,
                "moves": [{"purchase_id": self.purchases[0], "count": count}],
            },
            201,
        )
        return str(pool["id"])

    async def code(self, pool: str | None = None) -> str:
        made = await self.call("POST", self.pool_path(pool or self.default_pool) + "/auth-codes", self.admin, {}, 201)
        return str(made["code"])

    async def pool(self, pool: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("GET", self.pool_path(pool or self.default_pool), self.admin, status=200)
        return data

    async def in_use(self, pool: str | None = None) -> int:
        return int((await self.pool(pool))["in_use"])

    async def leases(self) -> list[dict[str, Any]]:
        data = await self.call("GET", f"/v1/estates/{self.estate_id}/leases", self.admin, status=200)
        return list(data["items"])


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

    @property
    def app(self) -> web.Application | None:
        """The running application (its services: store, clock…), None when stopped."""
        return None if self._runner is None else self._runner.app

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
        None,
        env={},
        data_dir=data_dir,
        operator_token=operator,
        clock=clock,
        sqlite_synchronous="normal",
        **settings,
    )
    server = BrokerServer(config)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            broker = LiveBroker(
                f"http://127.0.0.1:{server.port}", operator, clock, session, data_dir=data_dir, server=server
            )
            await broker.setup_estate()
            yield broker
    finally:
        await server.stop()


# --------------------------------------------------------------------------- agent


async def enroll_agent(
    config: Config,
    broker_url: str,
    code: str,
    *,
    name: str = "enc-host-7",
    domain: str | None = None,
) -> None:
    await enroll(config, code, broker_url=broker_url, name=name, domain=domain)


@dataclass
class AgentHarness:
    """A running agent daemon (in-process) and a client for its socket."""

    daemon: Daemon
    config: Config
    clock: FakeClock
    session: aiohttp.ClientSession

    @property
    def runner(self) -> Runner:
        return self.daemon.host.runner

    def keeper(self, encoder: str) -> Keeper:
        keeper = self.runner.get(encoder)
        assert keeper is not None, f"no keeper for {encoder}"
        return keeper

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, "http://agent" + path, json=body) as resp:
            return resp.status, (await resp.json() if resp.status != 204 else None)

    async def want(self, encoder: str, count: int, licence_type: str = LT, domain: str | None = None) -> dict[str, Any]:
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
            busy = [
                k
                for k in self.runner.keepers.values()
                if k.task is not None
                and not k.task.done()
                and not (k.record.held is None and k.record.halted is not None)
            ]
            # Event-stream watchers waiting to reconnect sleep on the clock too.
            return self.clock.sleeping >= len(busy) + self.daemon.host.streams.backing_off

        await eventually(waiting, within=within, what="the keepers to be idle")

    async def wait_state(self, encoder: str, state: str, within: float = 15.0) -> None:
        await eventually(
            lambda: self.keeper(encoder).state() == state,
            within=within,
            what=f"{encoder} to be {state} (is {self.keeper(encoder).state()})",
        )

    async def stop(self) -> None:
        await self.daemon.stop()

    async def close(self) -> None:
        """Clean up after a test: close the socket client and, if still serving, stop
        without releasing (the broker may be gone by now)."""
        await self.session.close()
        await self.daemon.host.streams.stop()
        if self.daemon.server.serving:
            await self.daemon.server.stop(grace=0)  # no clock is moved during clean-up
            await self.daemon.host.runner.stop(release=False, within=0)
            await self.daemon.host.close()


async def start_agent(config: Config, clock: FakeClock, notifier: Notifier | None = None) -> AgentHarness:
    """Start an agent daemon on ``config`` and ``clock``; systemd is absent unless
    ``notifier`` says otherwise."""
    daemon = Daemon(config, clock=clock, notifier=notifier or Notifier(env={}, clock=clock))
    await daemon.start()
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(config.socket)))
    return AgentHarness(daemon, config, clock, session)


AgentFactory = Callable[..., Awaitable[AgentHarness]]
