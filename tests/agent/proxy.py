"""A forwarding HTTP proxy between agent and broker, which can fail and forge on demand.

``Proxy`` is a plain forwarding server, so that a test can cut the broker off (an outage)
or alter its answers (a tampered token, another broker's signature) without touching
either side.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from shared import jws


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
        self.requests: list[str] = []  # every request but the event streams'
        self.streams: list[str | None] = []  # each GET /v1/stream: its Last-Event-ID
        self.streams_refused = False  # cut each new stream at once (a proxy that drops them)
        self.streams_muted = False  # pass nothing more on the open streams, keep them open
        self._open_streams: set[asyncio.Task[object]] = set()
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

    def fault(
        self,
        path: str,
        kind: str,
        *,
        times: int | None = 1,
        status: int = 200,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> Fault:
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
        if request.path == "/v1/stream":
            return await self._stream(request)
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
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.path_qs,
                data=data,
                headers=headers,
            ) as upstream:
                body = await upstream.read()
                status = upstream.status
                passed = {n: upstream.headers[n] for n in ("Content-Type", "Retry-After") if n in upstream.headers}
        except aiohttp.ClientError:
            return web.Response(
                status=502,
                text="<html><body>502 Bad Gateway</body></html>",
                content_type="text/html",
                headers={"Connection": "close"},
            )
        if held and self._hold_answer:
            self.holding += 1
            await self._gate.wait()  # a slow broker: it has acted, the answer comes late
            self.holding -= 1
        if fault is not None and fault.kind in ("drop_answer", "cut_answer"):
            if fault.kind == "cut_answer":
                response = web.StreamResponse(
                    status=status, headers={**passed, "Content-Length": str(len(body)), "Connection": "close"}
                )
                await response.prepare(request)
                await response.write(body[: len(body) // 2])
            return self._cut(request)
        if fault is not None and fault.kind == "replace":
            return web.Response(
                status=fault.status,
                body=fault.body,
                headers={"Content-Type": fault.content_type, "Connection": "close"},
            )
        if (self.tampering or (fault is not None and fault.kind == "resign")) and status < 300 and body:
            data = json.loads(body)
            if isinstance(data, dict) and isinstance(data.get("token"), str):
                data["token"] = tamper(data["token"]) if self.tampering else resign(data["token"])
                body = json.dumps(data).encode()
        return web.Response(status=status, body=body, headers={**passed, "Connection": "close"})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/stream``, passed through as it comes (recorded in ``streams``, with
        its Last-Event-ID); ``down`` and ``cut_streams`` end it as a lost connection would."""
        assert self._session is not None
        self.streams.append(request.headers.get("Last-Event-ID"))
        if self.streams_refused:
            return self._cut(request)
        fault = self._fault_for(request.path)
        if fault is not None and fault.kind == "replace":  # e.g. a broker without the stream
            return web.Response(status=fault.status, body=fault.body, headers={"Content-Type": fault.content_type})
        wanted = ("authorization", "accept", "last-event-id")
        headers = {k: v for k, v in request.headers.items() if k.lower() in wanted}
        task = asyncio.current_task()
        assert task is not None
        self._open_streams.add(task)
        try:
            async with self._session.get(
                self.upstream + request.path_qs, headers=headers, timeout=aiohttp.ClientTimeout(total=None)
            ) as upstream:
                names = ("Content-Type", "Retry-After", "X-Heartbeat-Seconds")
                passed = {n: upstream.headers[n] for n in names if n in upstream.headers}
                response = web.StreamResponse(status=upstream.status, headers=passed)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if not self.streams_muted:  # muted: swallowed, as a stuck middlebox would
                        await response.write(chunk)
                return response
        except (aiohttp.ClientError, ConnectionError, asyncio.CancelledError):
            return self._cut(request)
        finally:
            self._open_streams.discard(task)

    def cut_streams(self) -> None:
        """End every open stream as a broken connection would (no goodbye)."""
        for task in list(self._open_streams):
            task.cancel()
        self._open_streams.clear()

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
        self.cut_streams()
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
