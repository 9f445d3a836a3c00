"""This host's agent: its bindings, broker clients, pinned keys, runner and persistence.

``Host`` holds everything the local API and the keepers share, for one state directory;
``Daemon`` (``agent/daemon.py``) wires it to the socket, systemd and signals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any

from agent.backoff import RetryPolicy
from agent.bindings import Binding, Bindings, bindings_mtime, load_bindings
from agent.client import BrokerClient
from agent.clock import Clock, SystemClock
from agent.config import Config
from agent.errors import BrokerRefused, BrokerUnavailable, StateError
from agent.keeper import Keeper
from agent.keyring import KeyRing, signed_by
from agent.records import encode_leases, load_leases, write_leases_encoded
from agent.runner import HandBack, Runner
from agent.statedir import ensure_dir
from agent.stream import StreamDeps, Streams
from shared import __version__
from shared.timefmt import format_ts

log = logging.getLogger(__name__)

# How long a probe of the broker (for `status`) is remembered.
PROBE_TTL = 10.0
PROBE_TIMEOUT = 3.0


class Host:
    """One state directory's bindings and leases, kept by a ``Runner``."""

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.state_dir = config.state_dir
        self._bindings = Bindings()
        self._bindings_mtime = 0.0
        self._clients: dict[str, BrokerClient] = {}
        self._keyrings: dict[str, KeyRing] = {}
        self._save_lock = asyncio.Lock()
        self._dirty = False
        self._probes: dict[str, tuple[float, str, str | None]] = {}
        self.started_at = self.clock.wall()
        ensure_dir(self.state_dir)
        self.leases = load_leases(self.state_dir)
        self.bindings()
        self.runner = Runner(
            self.leases,
            bindings=self.bindings,
            client=self.client,
            keyring=self.keyring,
            save=self.save,
            clock=self.clock,
            retry_initial=config.retry_initial,
            retry_max=config.retry_max,
        )
        runner = self.runner
        self.streams = Streams(
            StreamDeps(
                clock=self.clock,
                rng=random.Random(),  # noqa: S311 - jitter, not secrets
                retry=RetryPolicy(initial=config.retry_initial, cap=config.retry_max),
                bindings=self.bindings,
                client=self.client,
                lease_revoked=runner.lease_revoked,
                binding_removed=lambda binding: runner.revoke_binding(binding, "server_removed"),
                renew_soon=runner.renew_soon,
                refresh_keys=lambda url: self.keyring(url).refresh(),
                spawn=runner.spawn,
            )
        )

    # ------------------------------------------------------------------ shared parts

    def bindings(self) -> Bindings:
        """The bindings, re-read when ``enroll`` has changed the file since last time."""
        mtime = bindings_mtime(self.state_dir)
        if mtime != self._bindings_mtime:
            first = self._bindings_mtime == 0.0
            try:
                fresh = load_bindings(self.state_dir)
            except StateError as exc:
                log.error("keeping the bindings read before: %s", exc)
                self._bindings_mtime = mtime
                return self._bindings
            before = {b.server_id for b in self._bindings.all()}
            self._bindings, self._bindings_mtime = fresh, mtime
            for binding in fresh.all():
                if binding.server_id not in before:
                    log.info("bound: %s (broker %s)", binding.describe(), binding.broker_url)
                    self._keyrings.pop(binding.broker_url, None)
            if not first and hasattr(self, "runner"):
                self.runner.bindings_changed()
            if not first and hasattr(self, "streams"):
                self.streams.sync()
        return self._bindings

    def client(self, url: str) -> BrokerClient:
        client = self._clients.get(url)
        if client is None:
            client = BrokerClient(url, ca_file=self.config.ca_file, timeout=self.config.request_timeout)
            self._clients[url] = client
        return client

    def keyring(self, url: str) -> KeyRing:
        ring = self._keyrings.get(url)
        if ring is None:
            key_sets = [b.keys for b in self.bindings().all() if b.broker_url == url]

            def remember(key_set: dict[str, Any]) -> None:
                self.leases.keys[url] = key_set
                self.runner.spawn(self.save())

            ring = KeyRing(
                key_sets,
                self.client(url).keys,
                monotonic=self.clock.monotonic,
                on_refresh=remember,
                published=self.leases.keys.get(url),
                in_use=self.kids_in_use,
            )
            self._keyrings[url] = ring
        return ring

    def kids_in_use(self) -> set[str]:
        """The signing keys of the unexpired lease tokens this host holds."""
        now = self.clock.monotonic()
        kids = set()
        for record in self.leases.encoders.values():
            held = record.held
            if held is not None and now < held.deadline and (kid := signed_by(held.token.reveal())):
                kids.add(kid)
        return kids

    async def save(self) -> None:
        """Persist the lease state; concurrent callers share one write (group commit)."""
        self._dirty = True
        async with self._save_lock:
            if not self._dirty:
                return  # a write that began after our change already holds it
            self._dirty = False
            data = encode_leases(self.leases)
            try:
                # Shielded: a cancelled caller must not let a second write overtake this one.
                await asyncio.shield(asyncio.to_thread(write_leases_encoded, self.state_dir, data))
            except StateError as exc:
                log.error("%s", exc)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def hand_back(self, server_id: str, within: float) -> HandBack | None:
        """Give back the leases held under the binding ``server_id`` before ``enroll
        --force`` replaces it (``Runner.hand_back``); None if no binding has that id."""
        for binding in self.bindings().all():
            if binding.server_id == server_id:
                return await self.runner.hand_back(binding, within)
        return None

    # ------------------------------------------------------------------ status

    async def probe(self, binding: Binding) -> tuple[str, str | None]:
        """Ask the broker whether it knows ``binding``: reachable, unreachable or removed."""
        cached = self._probes.get(binding.server_id)
        if cached is not None and self.clock.monotonic() - cached[0] < PROBE_TTL:
            return cached[1], cached[2]
        health = self.runner.health
        try:
            await asyncio.wait_for(self.client(binding.broker_url).me(binding.token), PROBE_TIMEOUT)
            result: tuple[str, str | None] = ("reachable", None)
            health.ok(binding.broker_url)
        except BrokerRefused as exc:
            health.ok(binding.broker_url)
            if exc.code == "unauthenticated":
                result = ("removed", "the broker no longer knows this binding")
                self.runner.revoke_binding(binding, "server_removed")
            else:
                result = ("reachable", str(exc))
        except BrokerUnavailable as exc:
            health.failed(binding.broker_url, exc)
            result = ("unreachable", exc.reason)
        except TimeoutError:
            result = ("unreachable", f"no answer within {PROBE_TIMEOUT:g} s")
        self._probes[binding.server_id] = (self.clock.monotonic(), *result)
        return result

    @staticmethod
    def _encoder_status(keeper: Keeper, reach: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
        """An encoder's view for ``status``: a lease whose broker does not answer is
        ``offline``, even before its keeper's next renewal has found that out."""
        view = keeper.view(with_token=False)
        held = keeper.record.held
        word, error = reach.get(held.server_id, ("unknown", None)) if held is not None else ("unknown", None)
        if view["state"] == "active" and word == "unreachable":
            view["state"] = "offline"
            view["error"] = view["error"] or {"code": "broker_unavailable", "detail": error or "broker unreachable"}
        return view

    async def status(self, *, probe: bool) -> dict[str, Any]:
        bindings = self.bindings().all()
        outcomes: list[tuple[str, str | None]]
        if probe:
            outcomes = list(await asyncio.gather(*(self.probe(b) for b in bindings)))
        else:
            outcomes = []
            for b in bindings:
                seen = self.runner.health.reachable(b.broker_url)
                word = {True: "reachable", False: "unreachable", None: "unknown"}[seen]
                outcomes.append((word, self.runner.health.last_error.get(b.broker_url)))
        reach = {b.server_id: outcome for b, outcome in zip(bindings, outcomes, strict=True)}
        encoders = [self._encoder_status(self.runner.keepers[s], reach) for s in sorted(self.runner.keepers)]
        return {
            "agent": {
                "version": __version__,
                "pid": os.getpid(),
                "started_at": format_ts(self.started_at),
                "state_dir": str(self.state_dir),
                "socket": str(self.config.socket),
            },
            "bindings": [
                {**b.public_view(), "broker": word, "broker_error": error, "events": self.streams.state(b.server_id)}
                for b, (word, error) in zip(bindings, outcomes, strict=True)
            ],
            "encoders": encoders,
        }
