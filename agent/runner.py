"""The set of keepers, one per encoder, and what they share.

``Runner`` starts a ``Keeper`` (``agent/keeper.py``) for every encoder that wants a lease,
including those re-adopted from the stored state at start, passes wishes on as the local
API hands them over, and on stop gives the leases back within a bounded time.

The runner drives its keepers and never the other way round: each keeper is handed one
``KeeperDeps`` and hears from the runner only through its intent methods (``want``,
``withdraw``, ``binding_removed``, ``bindings_changed``, ``hand_back``, ``revoked``,
``renew_soon``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.backoff import RetryPolicy
from agent.bindings import Binding, Bindings
from agent.client import BrokerClient
from agent.clock import Clock
from agent.errors import BrokerError, BrokerRefused
from agent.health import BrokerHealth
from agent.keeper import Keeper, KeeperDeps
from agent.keyring import KeyRing
from agent.records import EncoderRecord, LeaseState, Want

log = logging.getLogger(__name__)

# Keepers paused for a re-enrolment start again when the bindings change; if they never
# do (the enrolment died after handing back), after this long, under the old binding.
PAUSE_LIMIT = 60.0


@dataclass(frozen=True)
class HandBack:
    """What handing back a binding's leases came to (``Runner.hand_back``).

    ``released``: leases the broker took back. ``kept``: leases it did not (``error``
    says why; they lapse at ``lapse_in`` seconds at the latest). ``gone``: the broker no
    longer knows the binding, so it holds nothing under it.
    """

    released: int = 0
    kept: int = 0
    gone: bool = False
    error: str | None = None
    lapse_in: float | None = None


class Runner:
    """The set of keepers, and what they share: bindings, clients, keys, the clock."""

    def __init__(
        self,
        state: LeaseState,
        *,
        bindings: Callable[[], Bindings],
        client: Callable[[str], BrokerClient],
        keyring: Callable[[str], KeyRing],
        save: Callable[[], Awaitable[None]],
        clock: Clock,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self.save = save
        self.clock = clock
        self.health = BrokerHealth(clock)
        self.keepers: dict[str, Keeper] = {}
        self._versions = itertools.count(1)
        self._started = False
        self._background: set[asyncio.Task[None]] = set()
        self._paused: list[Keeper] = []
        self._resume_timer: asyncio.TimerHandle | None = None
        self._deps = KeeperDeps(
            clock=clock,
            rng=rng or random.Random(),  # noqa: S311 - jitter, not secrets
            retry=RetryPolicy(initial=retry_initial, cap=retry_max),
            bindings=bindings,
            client=client,
            keyring=keyring,
            save=save,
            save_soon=lambda: self.spawn(save()),
            health=self.health,
            next_version=lambda: next(self._versions),
            on_finished=self._forget,
            on_binding_gone=lambda binding: self.revoke_binding(binding, "server_removed"),
        )

    def spawn(self, work: Awaitable[None]) -> None:
        """Run ``work`` in the background, holding a reference until it is done."""

        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def start(self) -> None:
        """Start a keeper for every encoder in the stored state (re-adoption, see
        ``Keeper.adopt``); a record that neither wants nor holds a lease is dropped."""
        self._started = True
        for record in list(self.state.encoders.values()):
            if record.want is None and record.held is None:
                del self.state.encoders[record.encoder]
                continue
            self._add(Keeper.adopt(record, self._deps))

    def _add(self, keeper: Keeper) -> Keeper:
        self.keepers[keeper.encoder] = keeper
        if self._started:
            keeper.start()
        return keeper

    def get(self, encoder: str) -> Keeper | None:
        return self.keepers.get(encoder)

    async def want(self, encoder: str, want: Want) -> Keeper:
        """Record that ``encoder`` wants ``want``; asking again retries after a refusal."""
        keeper = self.keepers.get(encoder)
        if keeper is None:
            record = EncoderRecord(encoder=encoder, want=want)
            self.state.encoders[encoder] = record
            keeper = self._add(Keeper(record, self._deps))
        keeper.want(want)
        await self.save()
        return keeper

    async def withdraw(self, encoder: str) -> Keeper | None:
        """Withdraw ``encoder``'s wish; its keeper releases the lease and goes away."""
        keeper = self.keepers.get(encoder)
        if keeper is None:
            return None
        keeper.withdraw()
        await self.save()
        return keeper

    def _forget(self, keeper: Keeper) -> None:
        """``keeper`` has released its lease and stopped (its report, ``on_finished``)."""
        if self.keepers.get(keeper.encoder) is keeper:
            del self.keepers[keeper.encoder]
            self.state.encoders.pop(keeper.encoder, None)

    def revoke_binding(self, binding: Binding, code: str) -> None:
        """The broker no longer knows ``binding``: every lease under it is revoked."""
        for keeper in list(self.keepers.values()):
            keeper.binding_removed(binding, code)

    def lease_revoked(self, server_id: str, lease_id: str, code: str) -> None:
        """The broker's stream says an administrator ended ``lease_id`` (``code``:
        ``lease_revoked`` or ``lease_released``): its encoder stops being handed it now."""
        for keeper in list(self.keepers.values()):
            keeper.revoked(server_id, lease_id, code)

    def renew_soon(self, server_id: str) -> None:
        """Renew every lease held under ``server_id`` now (a pool change, a resync)."""
        for keeper in list(self.keepers.values()):
            keeper.renew_soon(server_id)

    def bindings_changed(self) -> None:
        """A binding was added or replaced: retry encoders stopped for want of one."""
        self._resume()
        for keeper in self.keepers.values():
            keeper.bindings_changed()

    async def hand_back(self, binding: Binding, within: float) -> HandBack:
        """Give back every lease held under ``binding`` through it, before ``enroll``
        replaces it; the encoders' wishes stand.

        The keepers on ``binding`` are stopped first, so that none renews or acquires
        under it meanwhile, and stay stopped until the bindings change (then they ask
        through the new binding) or ``PAUSE_LIMIT`` passes.
        """
        keepers = [k for k in self.keepers.values() if k.on_binding(binding) and k not in self._paused]
        for keeper in keepers:
            await keeper.cancel()
        self._paused.extend(keepers)
        if self._resume_timer is None:
            self._resume_timer = asyncio.get_running_loop().call_later(PAUSE_LIMIT, self._resume)
        deadline = self.clock.monotonic() + within
        outcomes = await asyncio.gather(*(k.hand_back(binding, deadline) for k in keepers), return_exceptions=True)
        released = sum(1 for o in outcomes if o is True)
        failed = [(k, o) for k, o in zip(keepers, outcomes, strict=True) if isinstance(o, BaseException)]
        if any(isinstance(o, BrokerRefused) and o.code == "unauthenticated" for _, o in failed):
            return HandBack(released=released, gone=True)
        for _, error in failed:
            if not isinstance(error, BrokerError):
                raise error
        # Only a lease still held was not given back: a failed ``count: 0`` for an
        # encoder that held nothing leaves no seat taken.
        still = [(k.record.held, error) for k, error in failed if k.record.held is not None]
        now = self.clock.monotonic()
        await self.save()
        return HandBack(
            released=released,
            kept=len(still),
            error=str(still[0][1]) if still else None,
            lapse_in=max((held.deadline - now for held, _ in still), default=None),
        )

    def _resume(self) -> None:
        """Start the keepers paused by ``hand_back`` again."""
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        paused, self._paused = self._paused, []
        for keeper in paused:
            if self.keepers.get(keeper.encoder) is keeper and self._started:
                keeper.start()

    async def stop(self, *, release: bool, within: float) -> None:
        """Stop every keeper; with ``release``, give their leases back ``within`` seconds.

        Wishes are kept, so that the next start acquires again for every encoder that
        still wants a lease. Leases not released in time lapse at their expiry.
        """
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self._paused.clear()
        keepers = list(self.keepers.values())
        for keeper in keepers:
            await keeper.cancel()
        if release:
            deadline = self.clock.monotonic() + within
            tasks = [asyncio.ensure_future(k.release_on_stop(deadline)) for k in keepers]
            if tasks:
                await asyncio.wait(tasks, timeout=within + 1.0)
            left = 0
            for task in tasks:
                if not task.done():
                    task.cancel()
                    left += 1
                elif task.cancelled() or task.exception() is not None or not task.result():
                    left += 1
            if left:
                log.warning("%d lease(s) not released on stop; they lapse at expiry", left)
        await self.save()
