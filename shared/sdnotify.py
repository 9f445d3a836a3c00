"""systemd's notification protocol (sd_notify(3)) without a dependency.

One datagram per message to the AF_UNIX socket named by ``NOTIFY_SOCKET``; a leading
``@`` means Linux's abstract namespace. Outside systemd (no ``NOTIFY_SOCKET``) every call
is a no-op, so the service runs the same under a terminal or a test. Both services use it:
the agent (ready, status, watchdog, stopping) and the broker (ready once its sockets are
bound, stopping on shutdown), so that ``Type=notify`` units start their dependants only
when the service answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)


class Sleeper(Protocol):
    """What the watchdog loop needs of a clock (the agent's ``Clock`` is one)."""

    async def sleep(self, seconds: float) -> None: ...


class _EventLoopSleeper:
    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Notifier:
    """Sends ``READY=1``, ``WATCHDOG=1``, ``STATUS=…`` and ``STOPPING=1`` to systemd."""

    def __init__(self, env: Mapping[str, str] | None = None, *, clock: Sleeper | None = None) -> None:
        env = os.environ if env is None else env
        self._clock: Sleeper = clock or _EventLoopSleeper()
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one message; return False (and log once at debug) if it could not go."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", message.split("=", 1)[0], exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def keep_watchdog(self) -> None:
        """Ping the watchdog at half its interval, forever (cancel to stop)."""
        if self.watchdog_interval is None or self.address is None:
            return
        while True:
            self.watchdog()
            await self._clock.sleep(self.watchdog_interval / 2)


def _address(value: str) -> str | bytes | None:
    if not value or value[0] not in "/@":
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds from ``WATCHDOG_USEC``, if the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid:
        with contextlib.suppress(ValueError):
            if int(pid) != os.getpid():
                return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
