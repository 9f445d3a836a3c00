"""A loopback webhook receiver that verifies every delivery with the Standard Webhooks
library, and a broker set up to deliver to it (``webhook_allow_private`` on)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks import Webhook

from broker.api.webhooks import WEBHOOKS
from broker.app import create_app
from broker.clock import ManualClock
from broker.webhooks.runtime import Webhooks
from tests.broker.estate_kit import Estate, base
from tests.conftest import Broker

# Short delays: the tests move the clock, and the receiver's library refuses a timestamp
# more than five minutes from the real time (so the test clock starts at the real time).
TEST_SCHEDULE = (0.0, 5.0, 60.0, 120.0)


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]
    path: str


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1; ``secrets`` are the endpoints' whsec_ secrets, and
    every delivery must verify under one of them (else it is kept in ``unverified``)."""

    secrets: list[str] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    status: int = 200
    answer: bytes = b"ok"
    delay: float = 0.0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if request.path == "/redirect":
            return web.Response(status=302, headers={"Location": f"http://127.0.0.1:{self.port}/hook"})
        failures = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                break
            except Exception as exc:
                failures.append(repr(exc))
        else:
            self.unverified.append("; ".join(failures) or "no secret to verify with")
        self.deliveries.append(Delivery(headers, body, json.loads(body), request.path))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, body=self.answer)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [d.payload for d in self.deliveries if d.payload["type"] == event_type]


def hooks_of(broker: Broker) -> Webhooks:
    return broker.client.app[WEBHOOKS]


async def deliver(broker: Broker) -> int:
    """One delivery round, waiting for any round the background loop has in flight."""
    hooks = hooks_of(broker)
    sent = await hooks.dispatcher.deliver_due()
    await hooks.dispatcher.idle()
    return sent


async def add_endpoint(
    broker: Broker, est: Estate, receiver: Receiver, events: list[str], url: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = await broker.call(
        "POST", f"{base(est)}/webhooks", est.admin, {"url": url or receiver.url, "events": events}, 201
    )
    receiver.secrets.append(body["secret"])
    return body


def hook_settings(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "webhook_allow_private": True,
        "webhook_schedule": TEST_SCHEDULE,
        "webhook_poll_seconds": 60.0,  # the tests deliver by hand (``deliver``)
        "webhook_scan_seconds": 3600.0,
    }
    settings.update(overrides)
    return settings


async def hook_broker(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    **overrides: Any,
) -> Broker:
    """A broker for webhook tests; its clock starts at the real time (see ``TEST_SCHEDULE``)."""
    clock.set(float(int(time.time())))
    client = await aiohttp_client(create_app(config_factory(**hook_settings(**overrides))))
    await client.app[WEBHOOKS].scanned.wait()  # the scan made at start is over: tests scan by hand
    return Broker(client, operator_token, clock)


@asynccontextmanager
async def listening() -> AsyncIterator[Receiver]:
    """A started receiver, stopped after the block (each test module's ``receiver`` fixture)."""
    found = Receiver()
    await found.start()
    try:
        yield found
    finally:
        await found.stop()


class ThreadReceiver(ThreadingHTTPServer):
    """The same receiver in a thread, for tests whose broker is another process (plain,
    non-async tests): ``verified`` holds each payload that one of ``secrets`` verified."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secrets: list[str] = []
        self.verified: list[dict[str, Any]] = []
        self.unverified: list[str] = []
        self.arrived: list[str] = []  # webhook-id of every request, on arrival
        self.delay = 0.0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    @classmethod
    @contextmanager
    def serving(cls) -> Iterator[ThreadReceiver]:
        server = cls()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ThreadReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.server.lock:
            self.server.arrived.append(headers.get("webhook-id", "?"))
            secrets = list(self.server.secrets)
        if self.server.delay:
            time.sleep(self.server.delay)
        for secret in secrets:
            try:
                Webhook(secret).verify(body, headers)
            except Exception:
                continue
            with self.server.lock:
                self.server.verified.append(json.loads(body))
            break
        else:
            with self.server.lock:
                self.server.unverified.append(headers.get("webhook-id", "?"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass
