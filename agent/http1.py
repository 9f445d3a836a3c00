"""HTTP/1.1 for the local API: aiohttp's request parser, and answers written here.

The local API answers a few small JSON requests from processes on this host. aiohttp's
server classes (``web_protocol``, ``web_request``, ``web_response`` and the HTML entity
table they bring) cost the resident agent about 1 MB for that (docs/agent.md,
"Footprint"). This module keeps what matters of them: aiohttp's own request parser (the
C llhttp parser, with its line and header limits, chunked bodies and its answer to what
is not HTTP), keep-alive with an idle timeout, pipelined requests answered in order, a
body limit; and writes each answer as one buffer with its ``Content-Length``.

What it leaves out, because the local API has no use for it: HEAD, ``Expect:
100-continue``, upgrades (the connection is closed after the answer), streamed answers.
A handler is not cancelled when its caller goes away (as in aiohttp): a lease asked for
is still asked for; only :meth:`Server.cut` cancels handlers.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import MultiDictProxy

log = logging.getLogger(__name__)

# aiohttp's defaults: the parser's read buffer, and how long an idle keep-alive
# connection is kept open.
READ_LIMIT = 2**16
KEEPALIVE_TIMEOUT = 75.0
# Requests read ahead of the one being answered (pipelined) before the connection is
# no longer read (one read of the socket may bring more, no further read does): with the
# wait for a full socket to drain, what a caller that never reads can make us hold.
MAX_QUEUED = 16


class BodyError(Exception):
    """A request body that could not be read whole (bad chunking, connection lost)."""


class BodyTooLarge(Exception):
    pass


class Request:
    """One request, its body read whole before the handler runs."""

    __slots__ = ("body", "message", "transport")

    def __init__(self, message: RawRequestMessage, body: bytes, transport: asyncio.Transport | None) -> None:
        self.message, self.body, self.transport = message, body, transport

    @property
    def method(self) -> str:
        return self.message.method

    @property
    def path(self) -> str:
        """The path, percent-decoded."""
        return self.message.url.path

    @property
    def query(self) -> MultiDictProxy[str]:
        return self.message.url.query

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` if it is not (an empty body is not)."""
        return json.loads(self.body)


class Response:
    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status, self.body, self.content_type = status, body, content_type


def json_response(data: Any, *, status: int = 200, content_type: str = "application/json") -> Response:
    return Response(status, json.dumps(data).encode(), content_type)


Handler = Callable[[Request], Awaitable[Response]]
# How the server's own refusals are written: (status, code, detail) -> an answer.
Refusal = Callable[[int, str, str], Response]


def encode(response: Response, *, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}\r\n"
        f"Content-Type: {response.content_type}; charset=utf-8\r\n"
        f"Content-Length: {len(response.body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode("ascii") + b"\r\n" + response.body


async def read_body(payload: StreamReader, limit: int) -> bytes:
    """The whole body; :class:`BodyTooLarge` past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await payload.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)


class Connection(BaseProtocol):
    """One client connection: parse what arrives, answer each request in turn."""

    def __init__(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(loop)
        self._requests = HttpRequestParser(self, loop, READ_LIMIT, payload_exception=BodyError)
        self._parser = self._requests  # what BaseProtocol pauses when a body backs up
        self._server = server
        self._queue: collections.deque[tuple[RawRequestMessage | HttpProcessingError, StreamReader]]
        self._queue = collections.deque()
        self._arrived = asyncio.Event()
        self._reading: StreamReader | None = None  # the body being read
        self._broken = False  # the parser refused the stream: nothing after it is read
        self._held = False  # not reading: MAX_QUEUED requests wait
        self._idle_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.handling = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server.connections.add(self)
        self.task = self._loop.create_task(self._serve())
        self._idle()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            messages, _upgraded, _tail = self._requests.feed_data(data)
        except HttpProcessingError as exc:
            self._broken = True
            self._queue.append((exc, EMPTY_PAYLOAD))
        else:
            self._queue.extend(messages)
        if self._queue:
            self._arrived.set()
        if len(self._queue) >= MAX_QUEUED and self.transport is not None:
            self._held = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # the caller stopped sending: close, as aiohttp's server does

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._server.connections.discard(self)
        self._stop_idle_timer()
        if self._reading is not None:
            self._reading.set_exception(ConnectionResetError("connection lost"))
        self._arrived.set()

    # serving

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _idle(self) -> None:
        self._stop_idle_timer()
        self._idle_timer = self._loop.call_later(KEEPALIVE_TIMEOUT, self.close)

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    async def _next(self) -> tuple[RawRequestMessage | HttpProcessingError, StreamReader] | None:
        while not self._queue:
            if self.transport is None or self._server.closing:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        if self.transport is None:
            return None
        if self._held and len(self._queue) <= MAX_QUEUED // 2:
            self._held = False
            self.transport.resume_reading()
        return self._queue.popleft()

    async def _serve(self) -> None:
        server = self._server
        while (item := await self._next()) is not None:
            message, payload = item
            self._stop_idle_timer()
            if isinstance(message, HttpProcessingError):
                self._answer(server.refuse(400, "bad_request", message.message or "not an HTTP request"), close=True)
                return
            self.handling = True
            server.started()
            try:
                response, close = await self._handle(message, payload)
            finally:
                self.handling = False
                server.finished()
            if response is None:
                return
            close = close or message.should_close or message.upgrade or server.closing
            self._answer(response, close=close)
            if close:
                return
            if self.writing_paused:  # a caller that does not read its answers: wait for it
                try:
                    await self._drain_helper()
                except ConnectionError:
                    return
            self._idle()

    async def _handle(self, message: RawRequestMessage, payload: StreamReader) -> tuple[Response | None, bool]:
        """The answer to one request (None if its caller is gone), and whether the
        connection must close after it (a body left unread)."""
        server = self._server
        self._reading = payload
        try:
            body = await read_body(payload, server.max_body)
        except BodyTooLarge:
            return server.refuse(413, "payload_too_large", f"the body is over {server.max_body} bytes"), True
        except BodyError as exc:
            return server.refuse(400, "bad_request", f"the body could not be read: {exc}"), True
        except ConnectionResetError:
            return None, True
        finally:
            self._reading = None
        request = Request(message, body, self.transport)
        try:
            return await server.handler(request), False
        except Exception:
            log.exception("local API: %s %s failed", message.method, message.path)
            return server.refuse(500, "internal_error", "the agent could not answer; its log says why"), True

    def _answer(self, response: Response, *, close: bool) -> None:
        transport = self.transport
        if transport is None:
            return  # the caller went away while its request was handled
        transport.write(encode(response, close=close))
        if close:
            transport.close()


class Server:
    """The protocol factory for ``loop.create_unix_server``, and what stopping needs."""

    def __init__(self, handler: Handler, refuse: Refusal, *, max_body: int) -> None:
        self.handler, self.refuse, self.max_body = handler, refuse, max_body
        self.connections: set[Connection] = set()
        self.closing = False
        self.busy = 0  # requests being handled
        self.idle = asyncio.Event()
        self.idle.set()

    def __call__(self) -> Connection:
        return Connection(self)

    def started(self) -> None:
        self.busy += 1
        self.idle.clear()

    def finished(self) -> None:
        self.busy -= 1
        if not self.busy:
            self.idle.set()

    def close_idle(self) -> None:
        """Answer no more requests after those in progress; close idle connections."""
        self.closing = True
        for connection in list(self.connections):
            if not connection.handling:
                connection.close()

    async def cut(self, within: float) -> None:
        """Cancel what is still being handled, give it ``within`` seconds to end, and
        close every connection."""
        self.closing = True
        tasks = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=within)
        for connection in list(self.connections):
            connection.close()
