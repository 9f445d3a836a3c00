"""``tenure-agent run``: the agent, its socket, systemd and signals wired together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from agent.clock import Clock
from agent.config import Config
from agent.host import Host
from agent.localapi import LocalServer
from shared.sdnotify import Notifier

log = logging.getLogger(__name__)

# Threads for blocking work: lease-state writes (fsync) and host-name lookups. Two, not
# asyncio's default of min(32, CPUs + 4): each idle thread keeps its stack and, under
# glibc, a malloc arena of its own resident for the life of the process.
WORKER_THREADS = 2


class Daemon:
    """Start: state, keepers, socket, READY=1. Stop: STOPPING=1, socket, leases."""

    def __init__(self, config: Config, *, clock: Clock | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.host = Host(config, clock=clock)
        self.notifier = notifier or Notifier(clock=self.host.clock)
        self.server = LocalServer(self.host)
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        bindings = self.host.bindings().all()
        if not bindings:
            log.warning(
                "not enrolled yet (no bindings in %s); run tenure-agent enroll",
                self.config.state_dir,
            )
        self.host.runner.start()
        self.host.streams.start()
        await self.server.start()
        count = len(self.host.runner.keepers)
        log.info(
            "serving on %s; %d binding(s), %d encoder(s) re-adopted",
            self.config.socket,
            len(bindings),
            count,
        )
        self.notifier.ready(f"{len(bindings)} binding(s), {count} encoder(s)")
        self._watchdog = asyncio.create_task(self.notifier.keep_watchdog())

    async def stop(self) -> None:
        self.notifier.stopping()
        release = not self.config.keep_leases_on_stop
        log.info("stopping; %s leases", "releasing" if release else "keeping")
        await self.host.streams.stop()
        await self.server.stop()
        await self.host.runner.stop(release=release, within=self.config.stop_timeout)
        await self.host.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        log.info("stopped")


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT (or ``stop`` is set), then stop cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="tenure-agent"))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    daemon = Daemon(config)
    await daemon.start()
    # What start-up built (modules, classes, the app) lives as long as the process: keep
    # it out of the collector's generations, so that idle collections do not walk it.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await daemon.stop()
