"""Time as the agent sees it; injected so that tests never sleep through real seconds.

Two clocks, for two different questions:

- ``monotonic()`` measures how long something took or has left: lease deadlines, renewal
  timers, retry delays, long polls. It never jumps when the host's clock is stepped
  (NTP, an operator), so a lease is served exactly as long as the broker granted it,
  whatever the host's calendar says. On Linux ``SystemClock`` reads ``CLOCK_BOOTTIME``,
  which also counts time spent suspended: the broker's clock runs on while the host
  sleeps, and so does every deadline measured on this one.
- ``boot_id()`` names the monotonic clock's origin. Readings under the same id are
  comparable across processes (an agent restarted on the same boot trusts the
  monotonic deadlines its predecessor stored); an empty id means "not comparable".
- ``wall()`` is the host's calendar (seconds since the epoch). It is used only where a
  value must outlive the boot (the persisted lease state, read again after a reboot,
  when monotonic time has started afresh), and for display.

``sleep`` waits on a different clock. ``SystemClock.sleep`` is ``asyncio.sleep``, whose
timers run on the event loop's clock, ``time.monotonic()``: ``CLOCK_MONOTONIC`` on Linux,
which is not stepped either but stops while the host is suspended. A sleep that spans a
suspend therefore ends late, by the time spent suspended, measured on ``monotonic()``.
No deadline is lost by this: every keeper reads ``monotonic()`` again when it wakes, and
the lease's state (``active`` or ``lost``) is computed from ``monotonic()`` whenever it
is asked for; only the renewal or retry that fell due during the suspend happens that
much later. (Sleeping on ``CLOCK_BOOTTIME`` would need a timerfd per sleep, outside
asyncio.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Protocol

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward; its origin means nothing."""
        ...

    def boot_id(self) -> str:
        """Which origin ``monotonic`` counts from; "" when readings cannot be compared
        outside this process."""
        ...

    def wall(self) -> float:
        """The host's idea of seconds since the epoch; may jump either way."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, as the event loop counts them (see the module's docstring)."""
        ...


class SystemClock:
    def __init__(self) -> None:
        self._clock_id: int | None = getattr(time, "CLOCK_BOOTTIME", None)
        self._boot_id: str | None = None

    def monotonic(self) -> float:
        if self._clock_id is not None:
            return time.clock_gettime(self._clock_id)
        return time.monotonic()

    def boot_id(self) -> str:
        if self._boot_id is None:
            try:
                boot = _BOOT_ID.read_text().strip() if self._clock_id is not None else ""
            except OSError:
                boot = ""
            self._boot_id = boot
        return self._boot_id

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        # The event loop's timers run on time.monotonic() (CLOCK_MONOTONIC): a wall-clock
        # step does not shorten or stretch a sleep, but a suspend stretches it.
        await asyncio.sleep(max(0.0, seconds))


async def wait_event(clock: Clock, event: asyncio.Event, seconds: float | None) -> bool:
    """Wait for ``event`` or for ``seconds`` of ``clock`` time, whichever is first.

    Returns True when the event was set. ``seconds=None`` waits for the event alone.
    """
    if event.is_set():
        return True
    if seconds is None:
        await event.wait()
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, sleeper):
            if not task.done():
                task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()
