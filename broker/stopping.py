"""A graceful stop that first lets the request bodies already on their way arrive.

Once aiohttp's shutdown has begun it reads nothing more from any connection (its
``data_received`` returns at once when the connection is closing). A request whose headers
had arrived and whose body had not (an HTTP client may send the two apart, and Nagle's
algorithm may hold the second back) would then wait out ``body_timeout_seconds``, be
answered 408, and hold the stop for as long. So a signal does not start aiohttp's shutdown
while a handler is still reading a body: it waits until none is, for at most
``BODIES_WAIT_SECONDS`` (a body on its way takes milliseconds; one that takes longer is
stalled, and meets its own timeout as before), and a body that a handler starts to wait
for after that is answered ``503 shutting_down`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from broker.errors import TenureError
from shared.words import count

log = logging.getLogger("tenure.broker")

# Within the parent's budget for a worker's stop (broker.workers.STOP_SECONDS, 15 s): this,
# then aiohttp's 10 s for the requests in flight, then the store's close.
BODIES_WAIT_SECONDS = 2.0


class ShuttingDown(TenureError):
    status, code, title = 503, "shutting_down", "The broker is stopping"


class Bodies:
    """The request bodies this process's handlers are waiting for (most arrive with their
    headers and are never counted), and whether the stop has begun."""

    def __init__(self) -> None:
        self.reading = 0
        self.closed = False  # aiohttp's shutdown has begun: no body can arrive any more
        self._when_none: Callable[[], object] | None = None

    def begin(self) -> None:
        self.reading += 1

    def end(self) -> None:
        self.reading -= 1
        if self.reading == 0 and self._when_none is not None:
            when_none, self._when_none = self._when_none, None
            when_none()

    def when_none(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once, when the last body on its way has arrived (or timed out)."""
        self._when_none = callback


def stop_on_first_signal(loop: asyncio.AbstractEventLoop, bodies: Bodies, body_timeout: float) -> None:
    """SIGTERM or SIGINT starts a graceful stop, once: Ctrl-C reaches the whole process
    group and the parent's SIGTERM follows, and a second GracefulExit would cut the
    requests in flight short. The stop begins once no body is on its way, or after
    ``BODIES_WAIT_SECONDS`` (``body_timeout`` if shorter)."""
    wait_at_most = min(body_timeout, BODIES_WAIT_SECONDS)

    def begin() -> None:
        if not bodies.closed:
            bodies.closed = True
            raise web.GracefulExit()  # out of the loop's run: aiohttp's shutdown follows

    waiting = False

    def stop() -> None:
        nonlocal waiting
        if waiting:
            return  # both signals may be queued when the first is handled
        waiting = True
        if bodies.reading == 0:
            begin()
        on_the_way = count(bodies.reading, "request body", "request bodies")
        log.info("waiting for %s on the way before stopping (at most %g s)", on_the_way, wait_at_most)
        # From a callback of its own, not from the handler whose body arrived last: an
        # exit raised inside its task would end that request too.
        bodies.when_none(lambda: loop.call_soon(begin))
        loop.call_later(wait_at_most, begin)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
