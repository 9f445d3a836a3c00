"""The broker's event stream (``GET /v1/stream``), held open for each binding while the agent runs.

What an administrator does reaches the encoders at once, instead of at the next renewal
(up to a third of the lease lifetime later):

- ``lease.revoked`` / ``lease.released``: that lease's token is no longer handed out and
  its encoder sees state ``revoked`` (a long-poll wakes) — ``Runner.lease_revoked``;
- ``server.removed``: the same for every lease under the binding — ``Runner.revoke_binding``;
- ``pool.changed``: the binding's leases are renewed now, to pick up the new lifetime;
- ``keys.rotated``: the broker's keys are fetched now;
- ``resync`` (the agent was away longer than the broker keeps events): renew everything
  and fetch the keys, since what was missed cannot be told.

A ``Watcher`` per binding connects, reads events, and when the stream ends or fails
connects again after a jittered pause that doubles up to the retry cap (on the host's
clock), resuming with ``Last-Event-ID``: the broker sends exactly what was missed. A
stream that says nothing for three of the broker's heartbeat intervals (a dead
connection, a proxy that swallowed it) counts as failed. A final refusal (the server is
removed: ``unauthenticated``) ends the watcher until the bindings change.

Nothing here is needed for leases to be right: renewals stay the fallback, and find any
revocation the stream did not deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent.backoff import RetryPolicy, backoff_delay
from agent.bindings import Binding, Bindings
from agent.client import BrokerClient
from agent.clock import Clock
from agent.errors import BrokerRefused, BrokerUnavailable, Retryable

log = logging.getLogger(__name__)

# A stream silent for this many of the broker's heartbeat intervals (its answer's
# X-Heartbeat-Seconds; 15 s unless said) is taken for dead and opened again.
MISSED_HEARTBEATS = 3
DEFAULT_HEARTBEAT = 15.0
# The longest line read (an event's JSON is far shorter).
MAX_LINE = 64 * 1024
# A stream that ends within this many seconds of opening counts as a failure (backoff).
SHORT_LIVED = 5.0
_MANY = 64  # failures enough for the retry cap


@dataclass(frozen=True)
class Event:
    id: str | None
    type: str
    data: dict[str, Any]


class SseParser:
    """Server-Sent Events, a line at a time (the WHATWG rules the agent needs).

    ``last_id`` is the last ``id:`` seen, whether or not its block was an event (a
    heartbeat may move it), as ``Last-Event-ID`` is to be sent on reconnection.
    """

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._type = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Take one line (without its end); an event when a blank line completes one."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        if self._id is not None:
            self.last_id = self._id
        kind, data, ident = self._type or "message", self._data, self._id
        self._type, self._data, self._id = "", [], None
        if not data:
            return None
        try:
            body = json.loads("\n".join(data))
        except ValueError:
            log.warning("event stream: a %s event that is not JSON; ignored", kind)
            return None
        payload = body.get("data") if isinstance(body, dict) else None
        return Event(ident or self.last_id, kind, payload if isinstance(payload, dict) else {})


@dataclass(frozen=True)
class StreamDeps:
    """What the watchers use: the clock, jitter, the retry policy, broker clients, and
    where each event goes (the runner's intent methods and the key rings)."""

    clock: Clock
    rng: random.Random
    retry: RetryPolicy
    bindings: Callable[[], Bindings]
    client: Callable[[str], BrokerClient]
    lease_revoked: Callable[[str, str, str], None]
    binding_removed: Callable[[Binding], None]
    renew_soon: Callable[[str], None]
    refresh_keys: Callable[[str], Awaitable[None]]
    spawn: Callable[[Awaitable[None]], None]


class Watcher:
    """Holds one binding's stream open for as long as it runs."""

    def __init__(self, binding: Binding, deps: StreamDeps) -> None:
        self.binding = binding
        self._deps = deps
        self.parser = SseParser()
        self.connected = False
        self.backing_off = False
        self.connections = 0
        self.removed = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"stream {self.binding.server_id}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        failures = 0
        while True:
            opened = self._deps.clock.monotonic()
            try:
                await self._hold()
                if self.removed:
                    return  # the broker removed the binding: its token opens nothing any more
                # It was open, and ended (the broker stopping: its agents reconnect to the
                # other replicas spread over the first pause, not all at once). One that
                # keeps ending at once (another agent on this binding takes its place)
                # backs off as a failure would.
                failures = failures + 1 if self._deps.clock.monotonic() - opened < SHORT_LIVED else 0
                pause = self._pause(max(failures, 1), None)
            except BrokerRefused as exc:
                if exc.code == "unauthenticated":
                    log.warning("event stream: the broker no longer knows %s", self.binding.describe())
                    self._deps.binding_removed(self.binding)
                    return
                # Not for this agent to mend (a broker older than the stream answers 404):
                # said once, then asked again at the slowest pace; renewals carry on.
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "event stream refused for %s (%s); renewals go on", self.binding.describe(), exc)
                pause = self._pause(_MANY, None)
            except Retryable as exc:
                failures += 1
                level = logging.INFO if failures == 1 else logging.DEBUG
                log.log(level, "event stream for %s: %s; renewals go on, reconnecting", self.binding.describe(), exc)
                pause = self._pause(failures, getattr(exc, "retry_after", None))
            self.backing_off = True
            try:
                await self._deps.clock.sleep(pause)
            finally:
                self.backing_off = False

    def _first_pause(self) -> float:
        """The first retry's ceiling: the agent's, or the broker's ``retry:`` hint if longer."""
        return min(self._deps.retry.cap, max(self._deps.retry.initial, (self.parser.retry_ms or 0) / 1000))

    def _pause(self, failures: int, retry_after: float | None) -> float:
        policy = self._deps.retry
        return backoff_delay(
            failures, initial=self._first_pause(), cap=policy.cap, rng=self._deps.rng, retry_after=retry_after
        )

    async def _hold(self) -> None:
        """One connection: read its events until it ends (returns) or fails (raises)."""
        client = self._deps.client(self.binding.broker_url)
        resp = await client.stream(self.binding.token, self.parser.last_id)
        resumed = self.parser.last_id is not None
        idle_limit = MISSED_HEARTBEATS * _heartbeat(resp.headers.get("X-Heartbeat-Seconds"))
        self.connections += 1
        self.connected = True
        if resumed and self.connections > 1:
            log.info("event stream for %s: connected again, catching up", self.binding.describe())
        try:
            while True:
                try:
                    async with asyncio.timeout(idle_limit):
                        raw = await resp.content.readline()
                except TimeoutError as exc:
                    raise BrokerUnavailable(client.base_url, f"event stream silent for {idle_limit:g} s") from exc
                except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: a line too long
                    reason = str(exc) or type(exc).__name__
                    raise BrokerUnavailable(client.base_url, f"event stream broke ({reason})") from exc
                if not raw:
                    return
                if len(raw) > MAX_LINE:
                    raise BrokerUnavailable(client.base_url, "event stream: a line too long")
                event = self.parser.feed(raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r"))
                if event is not None:
                    self._handle(event)
        finally:
            self.connected = False
            resp.close()

    def _handle(self, event: Event) -> None:
        deps = self._deps
        binding = self.binding
        data = event.data
        log.debug("event stream for %s: %s %s", binding.describe(), event.type, event.id)
        if event.type in ("lease.revoked", "lease.released"):
            lease_id = data.get("lease_id")
            if isinstance(lease_id, str):
                code = "lease_revoked" if event.type == "lease.revoked" else "lease_released"
                log.warning("broker says lease %s was %s by an administrator", lease_id, code.removeprefix("lease_"))
                deps.lease_revoked(binding.server_id, lease_id, code)
        elif event.type == "server.removed":
            log.warning("broker says %s was removed by an administrator", binding.describe())
            self.removed = True
            deps.binding_removed(binding)
        elif event.type == "pool.changed":
            deps.renew_soon(binding.server_id)
        elif event.type == "keys.rotated":
            deps.spawn(self._refresh_keys())
        elif event.type == "resync":
            log.info("event stream for %s: away too long to catch up; renewing every lease", binding.describe())
            deps.renew_soon(binding.server_id)
            deps.spawn(self._refresh_keys())

    async def _refresh_keys(self) -> None:
        try:
            await self._deps.refresh_keys(self.binding.broker_url)
        except Retryable as exc:
            log.info("could not fetch the broker's new keys now (%s); they are fetched when a token needs them", exc)


def _heartbeat(header: str | None) -> float:
    """The broker's heartbeat interval from its header, within sane bounds."""
    try:
        seconds = float(header) if header else DEFAULT_HEARTBEAT
    except ValueError:
        return DEFAULT_HEARTBEAT
    return min(max(seconds, 0.05), 300.0) if math.isfinite(seconds) else DEFAULT_HEARTBEAT


class Streams:
    """A ``Watcher`` for each binding, kept in line with the bindings."""

    def __init__(self, deps: StreamDeps) -> None:
        self._deps = deps
        self.watchers: dict[str, Watcher] = {}
        self._running = False

    def state(self, server_id: str) -> str:
        """The binding's stream, for ``status``: ``live`` (open), ``connecting`` (opening,
        or waiting to open again) or ``off`` (not held: the broker removed the binding)."""
        watcher = self.watchers.get(server_id)
        if watcher is None or watcher.task is None or watcher.task.done():
            return "off"
        return "live" if watcher.connected else "connecting"

    @property
    def backing_off(self) -> int:
        """Watchers waiting (on the clock) to connect again."""
        return sum(1 for w in self.watchers.values() if w.backing_off)

    def start(self) -> None:
        self._running = True
        self.sync()

    def sync(self) -> None:
        """A watcher for every binding (a new or replaced one gets a new watcher); those
        of bindings gone are stopped."""
        if not self._running:
            return
        bindings = {b.server_id: b for b in self._deps.bindings().all()}
        for server_id, watcher in list(self.watchers.items()):
            now = bindings.get(server_id)
            if now is None or (now.token, now.broker_url) != (watcher.binding.token, watcher.binding.broker_url):
                del self.watchers[server_id]
                self._deps.spawn(watcher.stop())
        for server_id, binding in bindings.items():
            if server_id not in self.watchers:
                watcher = self.watchers[server_id] = Watcher(binding, self._deps)
                watcher.start()

    async def stop(self) -> None:
        self._running = False
        watchers, self.watchers = list(self.watchers.values()), {}
        for watcher in watchers:
            await watcher.stop()
