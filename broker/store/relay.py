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
from typing import Any, TypeVar

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


def relayed(fn: Callable[..., T], /, **arguments: Any) -> Callable[[Tx], T]:
    """``fn(tx, **arguments)`` as a write job that may go to the writer process."""
    job = functools.partial(fn, **arguments)
    job.relay = True  # type: ignore[attr-defined]
    return job


def socket_path(data_dir: Path) -> Path:
    return data_dir / "writer.sock"


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return await reader.readexactly(length)


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

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        if not self.frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self.frames.append(frame)

    def _flush(self) -> None:
        frames, self.frames = self.frames, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(frames))


class RelayedSqliteStore(SqliteStore):
    """A worker's ``SqliteStore`` that sends ``relayed`` write jobs to the writer."""

    def __init__(self, path: Path, synchronous: str = "full", ids: IdSource = new_id) -> None:
        super().__init__(path, synchronous, ids)
        self.relay_path = socket_path(path.parent)
        self._relay_lock = asyncio.Lock()
        self._relay: _Outbox | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._answers: asyncio.Task[None] | None = None

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
                    reader, writer = await asyncio.open_unix_connection(self.relay_path)
                    break
                except OSError as exc:
                    if loop.time() >= deadline:
                        raise StorageUnavailable(f"the writer process does not answer: {exc.strerror}") from exc
                    await asyncio.sleep(0.05)
            self._relay = _Outbox(writer)
            self._answers = loop.create_task(self._read_answers(reader, writer))
            return self._relay

    async def _read_answers(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                job_id, kind, value = pickle.loads(await _read_frame(reader))  # noqa: S301 (our writer)
                future = self._waiting.pop(job_id, None)
                if future is not None and not future.done():
                    future.set_result((kind, value))
        except (OSError, asyncio.IncompleteReadError, EOFError):
            pass
        finally:
            self._relay = None
            writer.close()
            gone = StorageUnavailable("the writer process went away; the outcome is unknown: send it again")
            waiting, self._waiting = self._waiting, {}
            for future in waiting.values():
                if not future.done():
                    future.set_exception(gone)

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.writer.close()
        if self._answers is not None:
            self._answers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._answers
        await super().close()


async def serve_writer(store: SqliteStore, path: Path, ready: Callable[[], None]) -> None:
    """Run jobs sent to ``path`` through ``store`` until SIGTERM."""
    store.loop_commit_jobs = WRITER_LOOP_COMMIT_JOBS
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    jobs: set[asyncio.Task[None]] = set()

    async def run(job_id: int, fn: Callable[[Tx], Any], outbox: _Outbox) -> None:
        try:
            answer: tuple[int, str, Any] = (job_id, "ok", await store.write(fn))
        except Exception as exc:  # the worker raises it for its request
            if not isinstance(exc, errors.TenureError):
                log.exception("relayed write failed")
            answer = (job_id, *_failure(exc))
        try:
            frame = _frame(answer)
        except (pickle.PicklingError, TypeError, AttributeError):
            log.exception("cannot send a relayed write's answer back")
            frame = _frame((job_id, *_failure(errors.Inconsistent("unpicklable answer"))))
        outbox.send(frame)

    connected = 0
    all_gone = asyncio.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connected
        connected += 1
        all_gone.clear()
        try:
            await _serve_connection(reader, writer)
        finally:
            connected -= 1
            if connected == 0:
                all_gone.set()

    async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        outbox = _Outbox(writer)
        try:
            while True:
                job_id, fn = pickle.loads(await _read_frame(reader))  # noqa: S301 (our workers)
                task = loop.create_task(run(job_id, fn, outbox))
                jobs.add(task)
                task.add_done_callback(jobs.discard)
        except (OSError, asyncio.IncompleteReadError, EOFError):
            pass

    _remove(path)  # a dead writer's
    server = await asyncio.start_unix_server(connection, path=path)
    os.chmod(path, 0o600)
    log.info("writer listening for the workers' transactions (pid %d)", os.getpid())
    ready()
    await stop.wait()
    server.close()
    # The workers may have been told to stop at the same moment (Ctrl-C reaches the whole
    # process group; a parent killed outright sends each of its children SIGTERM): what
    # they still have in flight needs this process, until each closes its connection.
    if connected:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_gone.wait(), WORKERS_GONE_SECONDS)
    if jobs:
        await asyncio.wait(jobs, timeout=10)
    _remove(path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
