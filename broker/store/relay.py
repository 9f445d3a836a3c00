"""One writer for several SQLite workers (``serve --workers N`` on SQLite).

Workers on one SQLite file that each write fight over its write lock: a worker's
``BEGIN IMMEDIATE`` sleeps and retries while another commits, and acquire's p99 went
from ~75 ms to ~270 ms with two (docs/performance.md, "Workers"). Here the workers
parse, validate, authenticate, render and sign, and hand the hot transactions (acquire,
renew, release) to one writer process over a Unix socket in the data directory; the
writer runs them through its ``SqliteStore``, so that group commit keeps one
transaction and one flush per batch for all workers together.

- A job crosses as ``relayed(function, **arguments)``: a ``functools.partial`` of a
  module-level domain function, pickled (the socket is the data directory's, mode 0600,
  spoken only between processes of one broker). Any other write, and every read, runs on
  the worker's own connection as before; those are rare (admin calls, the reaper).
- The answer is the function's result or its ``TenureError``, rebuilt in the worker;
  any other exception is the writer's fault and comes back as 500 ``internal_error``.
- The writer gone (restarting): a job in flight fails with 503 ``storage_unavailable``
  (its outcome unknown, as for a dropped connection; an idempotency key makes the retry
  safe); new jobs wait up to ``CONNECT_WAIT`` seconds for the writer to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pickle
import signal
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from broker import errors
from broker.errors import StorageUnavailable
from broker.ids import IdSource, new_id
from broker.store.base import Tx
from broker.store.sqlite import WRITER_LOOP_COMMIT_JOBS, SqliteStore

log = logging.getLogger("tenure.store")
T = TypeVar("T")
CONNECT_WAIT = 5.0
# A worker's stop: up to 2 s for bodies on their way (broker.stopping), 10 s for the
# requests in flight, and its store's close; within the parent's 15 s (STOP_SECONDS).
WORKERS_GONE_SECONDS = 14.0
_LENGTH = struct.Struct(">I")
_READ_SIZE = 64 * 1024


def relayed(fn: Callable[..., T], /, **arguments: Any) -> Callable[[Tx], T]:
    """``fn(tx, **arguments)`` as a write job that may go to the writer process."""
    job = functools.partial(fn, **arguments)
    job.relay = True  # type: ignore[attr-defined]
    return job


def socket_path(data_dir: Path) -> Path:
    return data_dir / "writer.sock"


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _failure(exc: BaseException) -> tuple[str, Any]:
    """An exception as the worker will raise it: a ``TenureError`` as itself (class,
    detail and attributes: pickle would call each class's own ``__init__``), anything
    else as a bare 500."""
    if isinstance(exc, errors.TenureError):
        return "error", (type(exc), exc.detail, dict(vars(exc)))
    return "error", (errors.TenureError, "Something went wrong on the broker; it is logged.", {})


def _raise(payload: tuple[type[errors.TenureError], str, dict[str, Any]]) -> Any:
    cls, detail, state = payload
    exc = cls.__new__(cls)
    Exception.__init__(exc, detail)
    exc.__dict__.update(state)
    raise exc


class _Outbox:
    """Frames for one connection, sent together at the end of the loop's turn: a batch's
    answers (or a burst of requests' jobs) cost one write, not one each."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        if not self.frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self.frames.append(frame)

    def _flush(self) -> None:
        frames, self.frames = self.frames, []
        if not self.transport.is_closing():
            self.transport.write(b"".join(frames))


class _Frames(asyncio.BufferedProtocol):
    """One end of a relay connection: each frame that arrives is unpickled and handed to
    ``received`` as soon as its last byte is read, all those of one read together (a
    batch's answers, a burst of jobs), with no task woken per frame; ``made`` is called
    once the connection is up, and ``lost`` once it is gone. The peer is a process of this same broker.

    Reads go into one buffer kept for the connection's life (grown only for a frame
    larger than it), where a plain ``Protocol`` is handed a new ``bytes`` per read,
    allocated at 256 KiB and then shrunk (in a process where glibc serves that size by
    ``mmap``, three system calls a read)."""

    outbox: _Outbox

    def __init__(
        self,
        received: Callable[[Any, _Outbox], None],
        lost: Callable[[], None],
        made: Callable[[], None] | None = None,
    ) -> None:
        self._received = received
        self._lost = lost
        self._made = made
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)
        self._filled = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.outbox = _Outbox(cast(asyncio.WriteTransport, transport))
        if self._made is not None:
            self._made()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == len(self._buffer):  # one frame fills it: make room for the rest
            self._view.release()
            self._buffer = self._buffer + bytearray(len(self._buffer))
            self._view = memoryview(self._buffer)
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        view, start, filled = self._view, 0, self._filled
        while filled - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(view, start)
            end = start + _LENGTH.size + length
            if end > filled:
                break
            frame = pickle.loads(view[start + _LENGTH.size : end])  # noqa: S301 (our own processes)
            start = end
            self._received(frame, self.outbox)
        if start:
            rest = filled - start
            self._buffer[:rest] = bytes(view[start:filled])
            self._filled = rest

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()


class RelayedSqliteStore(SqliteStore):
    """A worker's ``SqliteStore`` that sends ``relayed`` write jobs to the writer."""

    def __init__(self, path: Path, synchronous: str = "full", ids: IdSource = new_id) -> None:
        super().__init__(path, synchronous, ids)
        self.relay_path = socket_path(path.parent)
        self._relay_lock = asyncio.Lock()
        self._relay: _Outbox | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0

    async def write(self, fn: Callable[[Tx], T], *, lane: str | None = None) -> T:
        if not getattr(fn, "relay", False):
            return await super().write(fn, lane=lane)
        if self._closed:
            raise StorageUnavailable("the store is closed")
        relay = self._relay if self._relay is not None else await self._connect()
        self._next_id += 1
        job_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = future
        relay.send(_frame((job_id, fn)))
        kind, value = await future
        if kind == "error":
            return _raise(value)  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    async def _connect(self) -> _Outbox:
        async with self._relay_lock:
            if self._relay is not None:
                return self._relay
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CONNECT_WAIT
            while True:
                try:
                    _, frames = await loop.create_unix_connection(
                        lambda: _Frames(self._answered, self._writer_gone), str(self.relay_path)
                    )
                    break
                except OSError as exc:
                    if loop.time() >= deadline:
                        raise StorageUnavailable(f"the writer process does not answer: {exc.strerror}") from exc
                    await asyncio.sleep(0.05)
            self._relay = frames.outbox
            return self._relay

    def _answered(self, answer: tuple[int, str, Any], _: _Outbox) -> None:
        job_id, kind, value = answer
        future = self._waiting.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result((kind, value))

    def _writer_gone(self) -> None:
        self._relay = None
        gone = StorageUnavailable("the writer process went away; the outcome is unknown: send it again")
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(gone)

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.transport.close()
            self._writer_gone()  # whatever still waits is answered now, not once the socket is closed
        await super().close()


class _Writer:
    """The writer's side of the relay: every worker's connection, and the jobs in flight,
    each answered on the connection it came by once its batch is durable."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.jobs: set[asyncio.Future[Any]] = set()
        self.connected = 0
        self.all_gone = asyncio.Event()

    def connection(self) -> _Frames:
        return _Frames(self._received, self._lost, self._made)

    def _made(self) -> None:
        # Counted once the connection is up: one whose transport could not be made (the
        # server closing under it) is never reported lost.
        self.connected += 1
        self.all_gone.clear()

    def _lost(self) -> None:
        self.connected -= 1
        if self.connected == 0:
            self.all_gone.set()

    def _received(self, job: tuple[int, Callable[[Tx], Any]], outbox: _Outbox) -> None:
        job_id, fn = job
        done = self.store.submit(fn)
        self.jobs.add(done)
        done.add_done_callback(functools.partial(self._answer, job_id, outbox))

    def _answer(self, job_id: int, outbox: _Outbox, done: asyncio.Future[Any]) -> None:
        self.jobs.discard(done)
        reply: tuple[int, str, Any]
        if done.cancelled():
            reply = (job_id, *_failure(StorageUnavailable("the writer is stopping")))
        elif (exc := done.exception()) is not None:  # the worker raises it for its request
            if not isinstance(exc, errors.TenureError):
                log.error("relayed write failed", exc_info=exc)
            reply = (job_id, *_failure(exc))
        else:
            reply = (job_id, "ok", done.result())
        try:
            frame = _frame(reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            log.exception("cannot send a relayed write's answer back")
            frame = _frame((job_id, *_failure(errors.Inconsistent("unpicklable answer"))))
        outbox.send(frame)


async def serve_writer(store: SqliteStore, path: Path, ready: Callable[[], None]) -> None:
    """Run jobs sent to ``path`` through ``store`` until SIGTERM."""
    store.loop_commit_jobs = WRITER_LOOP_COMMIT_JOBS
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    writer = _Writer(store)
    _remove(path)  # a dead writer's
    server = await loop.create_unix_server(writer.connection, path=str(path))
    os.chmod(path, 0o600)
    log.info("writer listening for the workers' transactions (pid %d)", os.getpid())
    ready()
    await stop.wait()
    server.close()
    # The workers may have been told to stop at the same moment (Ctrl-C reaches the whole
    # process group; a parent killed outright sends each of its children SIGTERM): what
    # they still have in flight needs this process, until each closes its connection.
    if writer.connected:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer.all_gone.wait(), WORKERS_GONE_SECONDS)
    if writer.jobs:
        await asyncio.wait(writer.jobs, timeout=10)
    _remove(path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
