"""``serve --workers N``: N broker processes answering on one address.

The parent binds the address itself, N listening sockets with ``SO_REUSEPORT`` (the
kernel spreads new connections over them), forks one worker per socket and then only
supervises: it never answers a request and holds no state a request depends on (each
worker opens the store itself; everything a request reads or writes is in the
database). Worker 0 starts alone first, so that what a first start makes (the schema,
the secret key, the operator token) is made once; the others start when it answers.

- ``READY=1`` goes to systemd once every worker answers, ``STOPPING=1`` on SIGTERM.
- SIGTERM or SIGINT to the parent: SIGTERM to every worker, each finishes its requests
  in flight (up to 10 s) and closes its store; the parent exits 0 once all have exited
  cleanly (1 if one had to be killed or exited non-zero).
- A worker that dies on its own is started again on its same socket (connections that
  arrive meanwhile wait in that socket's queue). One that dies before it answered (its
  start-up needs the database, which may be down) is started again after a pause,
  ``START_DELAY`` doubling to ``MAX_START_DELAY`` with jitter, and is no crash loop.
  More than ``MAX_RESTARTS`` deaths in ``RESTART_WINDOW`` seconds is a crash loop: the
  parent stops the rest and exits 1, for the service manager to act on. A worker 0 that
  cannot start at all (a bad secret key, a database it cannot open) ends the start-up
  with that worker's exit code.
- Housekeeping (the lease reaper, the idempotency purge) runs in worker 0 only; every
  worker re-reads the signing keys on its own ``key_reload_seconds``.
- On SQLite a writer process starts before worker 0 and runs the workers' hot writes
  (``broker.store.relay``); it is stopped after them, and restarted like a worker.
- Workers die with the parent, however it dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import random
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker import cpulimit, figures
from broker.config import Config
from shared.sdnotify import Notifier

log = logging.getLogger("tenure.broker")

# ``workers = "auto"``: one worker per core this process may run on, at most AUTO_MAX, and
# no more than its control group's CPU limit rounded to whole cores (1.5 counts as 2); one
# core gets one process (no writer). Two workers measured faster than one process on 2
# cores on both stores (docs/performance.md, "Every core by default"), and under a CPU
# quota of 1.5 cores; held to 1 core, one process did better ("A CPU limit").
AUTO_MAX = 4
# On SQLite, several workers hand their hot writes to one writer process (True) or each
# write the file themselves (False); see docs/performance.md, "Workers".
SQLITE_WRITER = True
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
START_DELAY = 0.5  # after a start that failed, doubling to MAX_START_DELAY, with jitter
MAX_START_DELAY = 10.0
WRITER = 255  # the writer's index (broker.store.relay), beside workers 0..N-1
PR_SET_PDEATHSIG = 1
STOP_SECONDS = 15.0  # a worker's wait for bodies (2 s), its shutdown_timeout (10 s), its store's close

Worker = Callable[[int, Callable[[], None]], int]
"""``worker(index, ready)``: run worker ``index`` until it stops; return its exit code;
call ``ready()`` once it answers."""


def count(cfg: Config) -> int:
    """How many processes ``serve`` runs for ``cfg``."""
    if cfg.workers != "auto":
        return int(cfg.workers)
    cores = min(AUTO_MAX, len(os.sched_getaffinity(0)))
    quota = cpulimit.limit()
    allowed = cores if quota is None else max(1, math.floor(quota + 0.5))  # 1.5 rounds up
    if allowed < cores:
        log.info("workers = auto: %d, for a CPU limit of %.2f cores", allowed, quota)
    return min(cores, allowed)


def listen(host: str, port: int, workers: int) -> list[list[socket.socket]]:
    """For each worker, one listening socket per address of ``host``, all on one port
    (port 0: the one the kernel gave the first)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, str | int]] = set()
    addresses = []
    for family, kind, proto, _, address in infos:
        if (family, address[0]) not in seen:
            seen.add((family, address[0]))
            addresses.append((family, kind, proto, address))
    made: list[list[socket.socket]] = [[] for _ in range(workers)]
    try:
        for family, kind, proto, address in addresses:
            for sockets in made:
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                port = port or sock.getsockname()[1]
                sock.listen(1024)
                sock.setblocking(False)
    except OSError:
        for sockets in made:
            for sock in sockets:
                sock.close()
        raise
    return made


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this worker when the parent dies, however it dies (SIGKILL too): no
    worker outlives the broker's supervisor, holding the port and the database."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Child:
    index: int
    pid: int
    ready: bool = False


@dataclass
class _Supervisor:
    sockets: list[list[socket.socket]]
    run: Worker
    writer: Callable[[Callable[[], None]], int] | None
    ready_r: int
    ready_w: int
    wake_r: int
    figures_dir: Path | None
    children: dict[int, _Child] = field(default_factory=dict)  # by pid
    deaths: deque[float] = field(default_factory=deque)
    waiting: dict[int, float] = field(default_factory=dict)  # index → when to start it again
    failed_starts: dict[int, int] = field(default_factory=dict)  # index → starts failed in a row

    def start(self, index: int) -> None:
        parent = os.getpid()
        # Until the child has its own dispositions, a SIGTERM sent to it (the parent
        # stopping at that moment) would run the parent's no-op handler and be lost: it
        # waits, blocked, and the child's default action takes it once unblocked.
        signals = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        else:  # the worker
            code = 1
            try:
                _die_with_parent(parent)
                signal.set_wakeup_fd(-1)
                for sig in signals:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                os.close(self.ready_r)
                os.close(self.wake_r)
                for i, sockets in enumerate(self.sockets):
                    if i != index:
                        for sock in sockets:
                            sock.close()

                def ready() -> None:
                    os.write(self.ready_w, bytes([index]))

                code = self.writer(ready) if self.writer is not None and index == WRITER else self.run(index, ready)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = _Child(index, pid)

    def read_ready(self) -> None:
        for index in os.read(self.ready_r, 256):
            self.failed_starts.pop(index, None)
            for child in self.children.values():
                if child.index == index:
                    child.ready = True

    def reap(self) -> list[tuple[_Child, int]]:
        """The workers that have exited, with their exit codes."""
        gone = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            if child is not None:
                gone.append((child, os.waitstatus_to_exitcode(status)))
                if self.figures_dir is not None:
                    figures.retire(self.figures_dir, pid)
        return gone

    def wait(self, timeout: float | None) -> set[int]:
        """Sleep until a worker is ready, a signal arrives or ``timeout``; the signals."""
        try:
            readable, _, _ = select.select([self.ready_r, self.wake_r], [], [], timeout)
        except InterruptedError:
            return set()
        if self.ready_r in readable:
            self.read_ready()
        if self.wake_r in readable:
            return set(os.read(self.wake_r, 256))
        return set()

    def stop(self) -> bool:
        """SIGTERM to every worker and wait for them, the writer last (the workers'
        requests in flight still need it); True when all exited 0."""
        deadline = time.monotonic() + STOP_SECONDS
        clean = self._stop_some(lambda child: child.index != WRITER, deadline)
        clean = self._stop_some(lambda child: True, deadline) and clean
        for pid, child in list(self.children.items()):
            log.error("worker %d (pid %d) did not stop within %g s: killed", child.index, pid, STOP_SECONDS)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            clean = False
        self.children.clear()
        return clean

    def _stop_some(self, which: Callable[[_Child], bool], deadline: float) -> bool:
        clean = True
        for pid, child in self.children.items():
            if which(child):
                os.kill(pid, signal.SIGTERM)
        while any(which(c) for c in self.children.values()) and time.monotonic() < deadline:
            for child, code in self.reap():
                # SIGTERM ends a worker still starting at once: it had nothing in flight.
                if code != 0 and not (code == -signal.SIGTERM and not child.ready):
                    log.warning("worker %d (pid %d) exited %d while stopping", child.index, child.pid, code)
                    clean = False
            self.wait(0.05)
        return clean

    def restart_the_dead(self, announced: bool) -> int | None:
        """Start again each worker that exited; an exit code when the broker must stop
        instead (a start-up that failed, or a crash loop)."""
        for child, code in self.reap():
            if not announced and child.index in (0, WRITER) and not child.ready:
                what = "the writer" if child.index == WRITER else "worker 0"
                # An exit code: the process said why itself, and that stays the last line.
                (log.error if code < 0 else log.debug)(
                    "%s exited %d before it answered: not starting the others", what, code
                )
                self.stop()
                return code or 1
            if not child.ready:
                # It never answered (its start-up needs the database, which may be down):
                # not a crash loop, but no hurry either.
                tries = self.failed_starts[child.index] = self.failed_starts.get(child.index, 0) + 1
                delay = min(MAX_START_DELAY, START_DELAY * 2 ** (tries - 1)) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
                log.error(
                    "worker %d (pid %d) exited %d before it answered: starting it again in %.1f s",
                    child.index,
                    child.pid,
                    code,
                    delay,
                )
                self.waiting[child.index] = time.monotonic() + delay
                continue
            log.error("worker %d (pid %d) exited %d", child.index, child.pid, code)
            if self.crash_loop():
                log.error("more than %d workers died within %g s: stopping", MAX_RESTARTS, RESTART_WINDOW)
                self.stop()
                return 1
            self.start(child.index)
        return None

    def start_the_waiting(self) -> float | None:
        """Start each worker whose pause after a failed start is over; the seconds until
        the next one's is (None: none waits)."""
        now = time.monotonic()
        for index, at in list(self.waiting.items()):
            if at <= now:
                del self.waiting[index]
                self.start(index)
        return max(0.0, min(self.waiting.values()) - now) if self.waiting else None

    def crash_loop(self) -> bool:
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - RESTART_WINDOW:
            self.deaths.popleft()
        return len(self.deaths) > MAX_RESTARTS


def supervise(
    cfg: Config,
    sockets: list[list[socket.socket]],
    run: Worker,
    *,
    https: bool,
    writer: Callable[[Callable[[], None]], int] | None = None,
) -> int:
    """Run ``len(sockets)`` workers until SIGTERM, and first ``writer`` (a process that
    writes for them, ``broker.store.relay``) if given; the parent's exit code."""
    notifier = Notifier()
    ready_r, ready_w = os.pipe()
    wake_r, wake_w = os.pipe()
    for fd in (ready_r, wake_r, wake_w):
        os.set_blocking(fd, False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    sup = _Supervisor(sockets, run, writer, ready_r, ready_w, wake_r, cfg.figures_dir)
    workers = len(sockets)
    port = sockets[0][0].getsockname()[1]
    address = f"{'https' if https else 'http'}://{cfg.host}:{port}"
    try:
        if writer is not None:
            sup.start(WRITER)
        announced = False
        started = 0  # how many HTTP workers have been started
        pause: float | None = None  # until a worker that failed to start is started again
        while True:
            signals = sup.wait(pause if sup.children or pause is not None else 0)
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                log.info("stopping %d workers", len(sup.children))
                notifier.stopping()
                clean = sup.stop()
                log.info("stopped (pid %d)", os.getpid())
                return 0 if clean else 1
            failed = sup.restart_the_dead(announced)
            if failed is not None:
                return failed
            pause = sup.start_the_waiting()
            ready = {child.index for child in sup.children.values() if child.ready}
            if started == 0 and (writer is None or WRITER in ready):
                sup.start(0)
                started = 1
            if started == 1 and 0 in ready:
                for index in range(1, workers):
                    sup.start(index)
                started = workers
            if not announced and len(ready - {WRITER}) == workers:
                announced = True
                log.info("%d workers listening on %s (pid %d)", workers, address, os.getpid())
                base = cfg.public_url or address
                log.info("console at %s/console/", base.rstrip("/"))
                notifier.ready(f"{workers} workers listening on {address}")
    finally:
        signal.set_wakeup_fd(-1)
        for fd in (ready_r, ready_w, wake_r, wake_w):
            os.close(fd)
