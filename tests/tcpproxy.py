"""A raw TCP forwarder between a broker and PostgreSQL, which can fail on demand.

``TcpProxy`` listens on 127.0.0.1 and passes bytes both ways to the upstream (the test
PostgreSQL server), on its own event loop in a thread, so that in-process brokers,
broker processes and plain synchronous code can all go through it. A test points the
broker's database URL at ``proxy.url(url)`` and then makes the network misbehave:

- ``cut()``: every open connection is dropped at once (both sides reset), as when a
  server restarts or a connection tracker forgets them; new connections are accepted.
- ``refuse()``: nothing listens any more (connection refused) and every open connection
  is dropped: the database is unreachable until ``restore()``. ``refuse(cut=False)``
  leaves open connections be (for the server to end them, as a shutting-down one does).
- ``restore()``: listening again on the same port.

``pg_terminate_backend`` needs no proxy: ``PostgresServer.terminate`` does it.

``Blackhole`` is the one fault the proxy cannot make: a database host that vanishes (power
lost, network partitioned) answers nothing at all, not even a reset, so what was sent is
never acknowledged. It drops every packet to and from the proxy's port with ``iptables``
(root only; ``Blackhole.unavailable()`` says why not where it cannot be used).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @classmethod
    def before(cls, url: str) -> TcpProxy:
        """A started proxy to the server of the PostgreSQL ``url``."""
        parts = urlsplit(url)
        proxy = cls(parts.hostname or "127.0.0.1", parts.port or 5432)
        proxy.start()
        return proxy

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._thread.start()
        self._run(self._listen())

    def cut(self) -> int:
        """Drop every open connection; returns how many there were."""
        result: int = self._run(self._cut())
        return result

    def refuse(self, *, cut: bool = True) -> int:
        """Stop listening and (unless ``cut`` is false) drop every open connection."""
        self._run(self._stop_listening())
        return self.cut() if cut else 0

    def restore(self) -> None:
        if self._server is None:
            self._run(self._listen())

    def close(self) -> None:
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- on the proxy's loop ---------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._server is not None:
            # Stop accepting first, and let the connections just accepted become transports
            # before the server closes. asyncio (3.11) makes each one's transport in a task
            # of its own, which fails when it starts after the server has closed ("Error on
            # transport creation") and leaves its socket to the collector: a ResourceWarning
            # in whichever test is running then.
            for sock in self._server.sockets:
                self._loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _shutdown(self) -> None:
        """Stop listening, drop every connection, and end every connection's task, those
        still connecting upstream included: none is left open for the collector to find
        (a ResourceWarning in some later test) once the loop is closed."""
        await self._stop_listening()
        # A connection accepted just before has its task made but not yet started: a task
        # cancelled before its first step never runs its body, and its connection would
        # never be dropped. Each takes its first step (and is counted open) first.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=1)  # cut: their pipes end by themselves
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _cut(self) -> int:
        dropped = len(self._open)
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        await asyncio.sleep(0)
        return dropped

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        # Counted open from the start: a cut while the upstream connection is still being
        # made drops this one too.
        self._open.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._open.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass  # no upstream: the client's connection is dropped below
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._open.discard(w)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()


class Blackhole:
    """``with Blackhole(port):`` every packet to or from 127.0.0.1:``port`` is dropped."""

    def __init__(self, port: int) -> None:
        tag = f"tenure-test-{os.getpid()}"
        self._rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-m", "comment", "--comment", tag, "-j", "DROP"],
            ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(port), "-m", "comment", "--comment", tag, "-j", "DROP"],
        ]

    @staticmethod
    def unavailable() -> str | None:
        """Why iptables cannot be used here, or None."""
        try:
            listed = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True, check=False)
        except OSError as exc:
            return f"iptables is not installed ({exc.strerror})"
        return None if listed.returncode == 0 else f"iptables cannot be used here: {listed.stderr.strip()}"

    def __enter__(self) -> Blackhole:
        for rule in self._rules:
            subprocess.run(["iptables", "-A", *rule], check=True, capture_output=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for rule in self._rules:
            subprocess.run(["iptables", "-D", *rule], check=False, capture_output=True)
