"""A minimal keep-alive HTTP/1.1 client on an asyncio Protocol, for driving load.

aiohttp's client costs ~200 µs of CPU per request here; on a 2-core machine that is
more than the server under test spends, so the figures would measure the client. This
one costs a few tens of µs: one ``write`` per request, the answer parsed from the
bytes as they arrive (``Content-Length`` bodies only, which is what aiohttp sends).
It speaks only to the benchmark's own servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

ANSWER_TIMEOUT = 30.0  # seconds; a TimeoutError (an OSError) counts as an error


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        elif b"transfer-encoding: chunked" in head:
            self.waiter.set_exception(RuntimeError("chunked answers are not supported"))
            self.waiter = None
            return
        total = end + 4 + length
        if len(self.buf) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))


class Client:
    """Up to ``size`` keep-alive connections to one ``http://127.0.0.1:port`` server."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.size = size
        self._idle: list[_Conn] = []
        self._made = 0
        self._free = asyncio.Condition()
        self._host_header = f"Host: {self.host}:{self.port}\r\n".encode()

    async def _get(self) -> _Conn:
        async with self._free:
            while not self._idle and self._made >= self.size:
                await self._free.wait()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
                self._made -= 1  # the server closed it while idle (keep-alive timeout)
            self._made += 1
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Conn, self.host, self.port)
        except BaseException:
            self._made -= 1
            raise
        return conn

    async def _put(self, conn: _Conn) -> None:
        async with self._free:
            if conn.closed:
                self._made -= 1
            else:
                self._idle.append(conn)
            self._free.notify()

    async def request(self, method: str, path: str, headers: bytes = b"", body: bytes = b"") -> tuple[int, bytes]:
        """Send one request; ``headers`` is preformatted ``Name: value\\r\\n`` lines."""
        conn = await self._get()
        try:
            conn.waiter = asyncio.get_running_loop().create_future()
            assert conn.transport is not None
            conn.transport.write(
                b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s"
                % (method.encode(), path.encode(), self._host_header, headers, len(body), body)
            )
            # Bounded: a request that never completes is an error, never a hang.
            return await asyncio.wait_for(conn.waiter, ANSWER_TIMEOUT)
        except BaseException:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
            raise
        finally:
            await self._put(conn)

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()


def bearer(token: str, json_body: bool = True) -> bytes:
    head = f"Authorization: Bearer {token}\r\n" if token else ""
    if json_body:
        head += "Content-Type: application/json\r\n"
    return head.encode()
