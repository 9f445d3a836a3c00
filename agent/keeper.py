"""One encoder's lease, kept in line with what the encoder wants.

A ``Keeper`` task drives its encoder's lease:

- **acquire** (or grow, shrink, change type) when nothing matching is held;
- **renew** at ``renew_after`` plus a little jitter, so that a fleet started together
  does not renew together (``agent/deadlines.py`` puts a grant on our own clock);
- **release** when the encoder no longer wants a lease.

A retryable failure (broker away, 429, 5xx, a token that does not verify) is retried with
tenacity, waiting ``backoff_delay`` (``agent/backoff.py``): exponential with full jitter,
capped at the policy's ``cap``, and never past the held lease's local deadline. While the
broker is away a valid lease is still served (state ``offline``); at its deadline the
encoder is told it is ``lost`` and the agent keeps trying to acquire again, at the capped
rate, for as long as the encoder wants one.
A renewal answered ``lease_gone`` with reason ``lapsed`` (or a lease the broker no longer
knows) is likewise acquired again. A final refusal stops the trying until the encoder
asks again: ``denied`` (e.g. ``pool_exhausted``) or ``revoked`` (an admin released or
revoked the lease, or removed this server: re-acquiring on our own would undo the admin;
see docs/design.md).

Encoder-visible states: ``pending``, ``active``, ``offline``, ``lost``, ``revoked``,
``denied``, and while a wish is being withdrawn ``releasing``/``released``.

A keeper talks out through one narrow door, its ``KeeperDeps`` (the clock, the random
source, the retry policy, the bindings, broker clients, key rings, persistence, broker
health, and two reports to its owner: "I am done" and "this binding is gone"). Its owner
(``Runner``, in ``agent/runner.py``) talks in through the intent methods ``want``,
``withdraw``, ``binding_removed``, ``bindings_changed``, ``revoked`` and ``renew_soon``
(the last two are what the broker's event stream says, ``agent/stream.py``), and never
writes its fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from agent.backoff import RetryPolicy, backoff_delay
from agent.bindings import Binding, Bindings
from agent.client import BrokerClient
from agent.clock import Clock, wait_event
from agent.deadlines import held_from_grant
from agent.errors import BrokerRefused, BrokerUnavailable, Retryable, TokenRejected
from agent.health import BrokerHealth
from agent.keyring import KeyRing
from agent.records import EncoderRecord, Held, Want
from shared.timefmt import format_ts
from shared.wire import Lease

log = logging.getLogger(__name__)

# Giving leases back on stop is quick or not at all: retry fast, within the stop timeout.
STOP_RETRY = RetryPolicy(initial=0.2, cap=2.0)


_REVOKED_DETAIL = "the lease was {} by an administrator"


class _Woken(Exception):
    """The encoder changed its wish while we were waiting to retry."""


@dataclass(frozen=True, slots=True)
class KeeperDeps:
    """Everything a keeper uses that is not its own: one set, shared by every keeper.

    ``bindings`` returns the current bindings; ``client`` and ``keyring`` the broker
    client and the pinned keys for a broker URL. ``save`` persists the lease state and
    ``save_soon`` does so in the background. ``next_version`` numbers changes, across
    keepers, so that an encoder's version never goes back when its keeper is replaced.
    ``on_finished`` tells the owner that a keeper has released its lease and stopped;
    ``on_binding_gone`` that the broker no longer knows a binding.
    """

    clock: Clock
    rng: random.Random
    retry: RetryPolicy
    bindings: Callable[[], Bindings]
    client: Callable[[str], BrokerClient]
    keyring: Callable[[str], KeyRing]
    save: Callable[[], Awaitable[None]]
    save_soon: Callable[[], None]
    health: BrokerHealth
    next_version: Callable[[], int]
    on_finished: Callable[[Keeper], None]
    on_binding_gone: Callable[[Binding], None]


class Keeper:
    """Keeps one encoder's lease in line with what the encoder wants.

    ``record`` is the encoder's entry in the lease state: from construction on, only
    the keeper changes it.

    An idle keeper holds as little as it can, as the agent keeps one per encoder for
    months (docs/agent.md, "Footprint"): slots, no events of its own (a flag and, while
    its task waits, one future; the event long polls wait on is made only when one does).
    """

    __slots__ = (
        "_changed",
        "_deps",
        "_in_flight",
        "_lost",
        "_offline",
        "_renew_soon",
        "_revoked",
        "_shown",
        "_waiter",
        "_woken",
        "encoder",
        "finished",
        "record",
        "task",
        "version",
    )

    def __init__(self, record: EncoderRecord, deps: KeeperDeps) -> None:
        self.record = record
        self._deps = deps
        self.encoder = record.encoder
        self.version = deps.next_version()
        self._offline = False
        self._lost = False
        self._in_flight = False
        self._renew_soon = False
        # Leases the broker said (on its stream) are revoked: a grant for one of them that
        # was in flight meanwhile is not handed out (see ``revoked``).
        self._revoked: dict[str, str] = {}  # lease id: the error code it was revoked with
        # Set by every intent method, cleared by the loop when it looks again; ``_waiter``
        # is what the loop's task awaits meanwhile (see ``_wait``).
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        # Set on every change, for long polls (``wait_changed``); made when one waits.
        self._changed: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        # True once the encoder's lease is released and the task has ended.
        self.finished = False
        # While a new lease is being saved, the encoder is shown what it was last told:
        # the view from before the change (see _store).
        self._shown: dict[str, Any] | None = None

    @classmethod
    def adopt(cls, record: EncoderRecord, deps: KeeperDeps) -> Keeper:
        """A keeper for ``record`` as read back from the stored state at start.

        A lease it holds is put on this process's clock (``Held.resumed``): on the same
        boot its deadline stands; after a reboot it is served for no longer than its
        stored wall-clock deadline allows, and never for more than its lifetime. It is
        renewed by id at once.
        """
        if record.held is not None:
            clock = deps.clock
            record.held = record.held.resumed(clock.monotonic(), clock.wall(), clock.boot_id())
        return cls(record, deps)

    # ------------------------------------------------------------------ outside view

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"keeper {self.encoder}")

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def want(self, want: Want) -> None:
        """The encoder asks for ``want``; asking again retries after a refusal."""
        r = self.record
        r.want = want
        r.halted = None
        r.error = None
        self._lost = False
        self._wake_up()
        self._announce()

    def withdraw(self) -> None:
        """The encoder wants no lease: release it, then finish."""
        r = self.record
        r.want = None
        r.halted = None
        r.error = None
        self._wake_up()
        self._announce()

    def binding_removed(self, binding: Binding, code: str) -> None:
        """The broker no longer knows ``binding``: a lease under it is revoked."""
        r = self.record
        on_it = (r.held is not None and r.held.server_id == binding.server_id) or (
            r.held is None and r.want is not None and r.want.domain == binding.domain
        )
        if on_it and r.halted != "revoked":
            self._revoke(code, "this server or domain was removed by an administrator")
            self._wake_up()

    def revoked(self, server_id: str, lease_id: str, code: str) -> None:
        """The broker says at once (``agent/stream.py``) that an administrator revoked or
        released ``lease_id``: its token is not handed out from now on, and the encoder
        is told (state ``revoked``), as a refused renewal would have later."""
        if len(self._revoked) >= 16:
            self._revoked.clear()  # bounded: only a grant in flight right now matters
        self._revoked[lease_id] = code
        held = self.record.held
        if held is not None and held.lease_id == lease_id and held.server_id == server_id:
            self._revoke(code, _REVOKED_DETAIL.format(code.removeprefix("lease_")))
            self._wake_up()

    def _revoked_meanwhile(self, lease_id: str) -> bool:
        """True if the broker's stream said ``lease_id`` was revoked while a request that
        returns it was on its way: the answer is not handed out, and the encoder is told."""
        code = self._revoked.get(lease_id)
        if code is None:
            return False
        if self.record.halted != "revoked":  # a grant of a lease the keeper did not hold yet
            self.record.held = None
            self._revoke(code, _REVOKED_DETAIL.format(code.removeprefix("lease_")))
            self._save_later()
        return True

    def renew_soon(self, server_id: str) -> None:
        """Renew a lease held under ``server_id`` now, not at ``renew_after`` (the pool's
        lease lifetime changed, or the agent missed what the broker said)."""
        held = self.record.held
        if held is not None and held.server_id == server_id:
            self._renew_soon = True
            self._wake_up()

    def bindings_changed(self) -> None:
        """A binding was added or replaced: retry if we stopped for want of one."""
        r = self.record
        if r.halted and (r.error or {}).get("code") in ("server_removed", "not_enrolled"):
            r.halted = None
            r.error = None
            self._announce()
            self._wake_up()

    def _wake_up(self) -> None:
        """Make the loop look again at what the encoder wants (see ``_wait``)."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, seconds: float | None) -> bool:
        """Wait until woken (True) or for ``seconds`` of the clock (False); ``None``
        waits to be woken alone. As ``wait_event`` on an event, with one future instead
        of an event, its waiter and a second task."""
        if self._woken:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper: asyncio.Future[None] | None = None
        if seconds is not None:

            def slept(_: object) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            sleeper = asyncio.ensure_future(self._deps.clock.sleep(seconds))
            sleeper.add_done_callback(slept)
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None
            if sleeper is not None and not sleeper.done():
                sleeper.cancel()
                await asyncio.gather(sleeper, return_exceptions=True)
        return self._woken

    def _announce(self) -> None:
        """Bump the version and wake everyone waiting for a change."""
        self.version = self._deps.next_version()
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def wait_changed(self, version: int, within: float) -> None:
        """Return when the version is no longer ``version``, or ``within`` seconds (clock)."""
        clock = self._deps.clock
        deadline = clock.monotonic() + within
        # Finishing announces a change too: the version alone tells.
        while self.version == version and not self.finished:
            left = deadline - clock.monotonic()
            if left <= 0:
                return
            if self._changed is None:
                self._changed = asyncio.Event()
            await wait_event(clock, self._changed, left)

    @property
    def saving(self) -> bool:
        """A change is being written to disk; the encoder is shown what was before it."""
        return self._shown is not None

    def state(self, now: float | None = None) -> str:
        """The encoder-visible state; ``now`` is on the monotonic clock."""
        if self._shown is not None:
            return str(self._shown["state"])
        now = self._deps.clock.monotonic() if now is None else now
        r = self.record
        if r.want is None:
            return "releasing" if r.held is not None else "released"
        if r.held is not None and now < r.held.deadline:
            return "offline" if self._offline else "active"
        if r.halted is not None:
            return r.halted
        if self._lost or r.held is not None:
            return "lost"
        return "pending"

    def view(self, *, with_token: bool = True) -> dict[str, Any]:
        """The encoder's lease as the local API shows it."""
        if self._shown is not None:
            shown = dict(self._shown)
            if not with_token and shown["lease"] is not None:
                shown["lease"] = {k: v for k, v in shown["lease"].items() if k != "token"}
            return shown
        now = self._deps.clock.monotonic()
        r = self.record
        state = self.state(now)
        lease: dict[str, Any] | None = None
        if state in ("active", "offline") and r.held is not None:
            held = r.held
            lease = {
                "id": held.lease_id,
                "licence_type": held.licence_type,
                "count": held.count,
                "expires_at": format_ts(held.expires_at),
                "expires_in": max(0, int(held.deadline - now)),
                "renew_after": format_ts(held.renew_after),
                "purchase_state": held.purchase_state,
                "seats": list(held.seats),
            }
            if with_token:
                lease["token"] = held.token.reveal()
        return {
            "encoder": self.encoder,
            "version": self.version,
            "state": state,
            "wanted": r.want.to_json() if r.want else None,
            "lease": lease,
            "error": r.error,
        }

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        r = self.record
        clock = self._deps.clock
        while True:
            self._woken = False
            if r.want is None:
                if r.held is not None and clock.monotonic() < r.held.deadline:
                    await self._retrying(self._release)
                    if r.want is None and r.held is not None:
                        # Gave up at the deadline: the lease has lapsed at the broker.
                        r.held = None
                    continue
                r.held = None
                self._finish()
                return
            if r.held is not None and clock.monotonic() >= r.held.deadline:
                self._lose()
                continue
            if r.held is None and r.halted is not None:
                await self._wait(None)
                continue
            if r.held is not None and (r.halted is not None or self._matches(r.held, r.want)):
                if not self._renew_soon and await self._wait(r.held.renew_at - clock.monotonic()):
                    continue
                self._renew_soon = False
                await self._retrying(self._renew)
                continue
            await self._retrying(self._acquire)

    def _matches(self, held: Held, want: Want) -> bool:
        return held.licence_type == want.licence_type and held.count == want.count and held.domain == want.domain

    async def _retrying(self, op: Callable[[], Awaitable[None]]) -> None:
        """Run ``op`` until it succeeds, is refused, or the held lease runs out."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Retryable),
            wait=self._backoff,
            stop=self._give_up,
            sleep=self._sleep,
            before_sleep=self._failed,
            reraise=True,
        )
        with contextlib.suppress(_Woken):
            try:
                await retrying(op)
            except Retryable as exc:
                self._note(exc)

    def _backoff(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        held = self.record.held
        policy = self._deps.retry
        return backoff_delay(
            state.attempt_number,
            initial=policy.initial,
            cap=policy.cap,
            rng=self._deps.rng,
            retry_after=getattr(exc, "retry_after", None),
            time_left=None if held is None else held.deadline - self._deps.clock.monotonic(),
        )

    def _give_up(self, state: RetryCallState) -> bool:
        held = self.record.held
        return held is not None and self._deps.clock.monotonic() >= held.deadline

    async def _sleep(self, seconds: float) -> None:
        if await self._wait(seconds):
            raise _Woken

    def _failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Retryable):
            self._note(exc)

    def _note(self, exc: Retryable) -> None:
        """A retryable failure: the encoder hears that the agent is offline (or why not)."""
        if isinstance(exc, BrokerUnavailable):
            self._deps.health.failed(exc.url, exc)
            error = {"code": "broker_unavailable", "detail": str(exc)}
        else:
            log.warning("encoder %s: %s; not served, trying again", self.encoder, exc)
            error = {"code": "token_rejected", "detail": str(exc)}
        before = (self.state(), self.record.error)
        self._offline = True
        self.record.error = error
        if (self.state(), self.record.error) != before:
            self._announce()

    def _finish(self) -> None:
        self._deps.on_finished(self)
        self.finished = True
        self._announce()

    def _lose(self) -> None:
        held = self.record.held
        assert held is not None
        log.warning(
            "lease lost: encoder %s, %d x %s expired at %s without renewal",
            self.encoder,
            held.count,
            held.licence_type,
            format_ts(held.expires_at),
        )
        self.record.held = None
        self._lost = True
        self._announce()
        self._save_later()

    def _revoke(self, code: str, detail: str) -> None:
        held = self.record.held
        log.warning("lease revoked: encoder %s (%s)", self.encoder, code)
        self.record.held = None
        self.record.halted = "revoked"
        self.record.error = {"code": code, "detail": detail}
        self._offline = False
        self._announce()
        if held is not None:
            self._save_later()

    def _save_later(self) -> None:
        self._deps.save_soon()

    # ------------------------------------------------------------------ broker calls

    def _binding(self, domain: str | None) -> Binding | None:
        return self._deps.bindings().get(domain)

    async def _accept(self, grant: Lease, binding: Binding, sent: tuple[float, float], want: Want | None) -> Held:
        """Verify ``grant`` and turn it into a ``Held`` lease on our own monotonic clock.

        ``sent`` is (monotonic, wall) when the request that won it left.
        """
        if want is not None and (grant.count != want.count or grant.licence_type != want.licence_type):
            raise TokenRejected("the lease granted does not match the request")
        clock = self._deps.clock
        received = clock.monotonic()

        def broker_now() -> float:
            return grant.server_time + (clock.monotonic() - received)

        await self._deps.keyring(binding.broker_url).verify(
            grant,
            encoder=self.encoder,
            server_id=binding.server_id,
            estate_id=binding.estate_id,
            broker_now=broker_now,
        )
        sent_at, sent_wall = sent
        return held_from_grant(
            grant, binding, sent_at=sent_at, sent_wall=sent_wall, boot_id=clock.boot_id(), rng=self._deps.rng
        )

    def _sent(self) -> tuple[float, float]:
        clock = self._deps.clock
        return clock.monotonic(), clock.wall()

    async def _store(self, held: Held | None) -> None:
        # On disk before the encoder is told: an agent killed right after answering
        # "active" re-adopts the very lease it announced, instead of asking again. Until
        # then, whoever asks (a poll, not only a waiter) sees the view from before.
        self._shown = self.view()
        self.record.held = held
        self.record.error = None
        self._offline = False
        if held is not None:
            self._lost = False
        try:
            await self._deps.save()
        finally:
            self._shown = None
            self._announce()

    async def _acquire(self) -> None:
        r = self.record
        want = r.want
        if want is None:
            return
        binding = self._binding(want.domain)
        if binding is None:
            r.halted = "denied"
            what = f'domain "{want.domain}"' if want.domain else "this host"
            r.error = {
                "code": "not_enrolled",
                "detail": f"{what} is not enrolled: run tenure-agent enroll",
            }
            self._announce()
            await self._deps.save()
            return
        if r.held is not None and r.held.server_id != binding.server_id:
            await self._release()  # moving to another binding: give the old seats back
        client = self._deps.client(binding.broker_url)
        sent = self._sent()
        self._in_flight = True
        try:
            grant = await client.acquire(binding.token, self.encoder, want.licence_type, want.count, want.kind)
        except BrokerRefused as exc:
            self._deps.health.ok(binding.broker_url)
            await self._refused(exc, binding)
            return
        finally:
            self._in_flight = False
        self._deps.health.ok(binding.broker_url)
        if grant is None:
            raise BrokerUnavailable(binding.broker_url, "acquire answered with no lease")
        held = await self._accept(grant, binding, sent, want)
        if self._revoked_meanwhile(held.lease_id):
            return
        # Even if the wish changed while we asked, this lease is real: keep it, and let
        # the loop go round again to reshape or release it.
        log.info(
            "lease granted: encoder %s, %d x %s (lease %s, expires %s%s)",
            self.encoder,
            held.count,
            held.licence_type,
            held.lease_id,
            format_ts(held.expires_at),
            "" if held.purchase_state == "valid" else f", purchase {held.purchase_state}",
        )
        r.halted = None
        await self._store(held)

    async def _refused(self, exc: BrokerRefused, binding: Binding) -> None:
        r = self.record
        if exc.code == "unauthenticated":
            log.warning("broker no longer knows %s; its leases are revoked", binding.describe())
            self._deps.on_binding_gone(binding)
            self._revoke("server_removed", "this server or domain was removed by an administrator")
            await self._deps.save()
            return
        log.warning("lease denied: encoder %s (%s)", self.encoder, exc)
        r.halted = "denied"
        error: dict[str, Any] = {"code": exc.code, "detail": exc.detail or str(exc)}
        # pool_exhausted: what is available, soft-locked and reserved; server_limit: the cap.
        for name in ("available", "soft_locked", "reserved", "max"):
            if isinstance(exc.body.get(name), int):
                error[name] = exc.body[name]
        types = exc.body.get("types")  # licence_type_not_in_pool: what the pool does hold
        if isinstance(types, list) and all(isinstance(t, str) for t in types):
            error["types"] = types
        r.error = error
        self._offline = False
        self._announce()
        await self._deps.save()

    async def _renew(self) -> None:
        r = self.record
        held = r.held
        if held is None:
            return
        binding = self._binding(held.domain)
        if binding is None or binding.server_id != held.server_id:
            # Re-enrolled under another identity: the old lease cannot be renewed and
            # lapses on its own; acquire afresh under the new binding.
            await self._store(None)
            return
        client = self._deps.client(binding.broker_url)
        sent = self._sent()
        try:
            grant = await client.renew(binding.token, held.lease_id)
        except BrokerRefused as exc:
            self._deps.health.ok(binding.broker_url)
            reason = exc.body.get("reason")
            if exc.code == "lease_gone" and reason in ("released", "revoked"):
                self._revoke(f"lease_{reason}", _REVOKED_DETAIL.format(reason))
                await self._deps.save()
            elif exc.code == "unauthenticated":
                await self._refused(exc, binding)
            else:
                # Lapsed, or unknown to the broker: the encoder still wants it; ask again.
                log.warning(
                    "lease %s of encoder %s is gone (%s); acquiring again",
                    held.lease_id,
                    self.encoder,
                    reason or exc.code,
                )
                self._lost = True
                await self._store(None)
            return
        self._deps.health.ok(binding.broker_url)
        fresh = await self._accept(grant, binding, sent, None)
        if self._revoked_meanwhile(fresh.lease_id):
            return
        if fresh.lease_id != held.lease_id or fresh.count != held.count:
            raise TokenRejected("the renewed lease does not match the lease held")
        if sent[0] > held.renew_at + max(1.0, (held.deadline - held.renew_at) / 2):
            log.info(
                "lease renewed late: encoder %s, lease %s, now expires %s",
                self.encoder,
                held.lease_id,
                format_ts(fresh.expires_at),
            )
        else:
            log.debug("lease renewed: encoder %s, lease %s", self.encoder, held.lease_id)
        await self._store(fresh)

    async def _release(self) -> None:
        held = self.record.held
        if held is None:
            return
        binding = self._binding(held.domain)
        if binding is not None and binding.server_id == held.server_id:
            try:
                await self._deps.client(binding.broker_url).release(binding.token, held.lease_id)
            except BrokerRefused as exc:
                log.debug("release of lease %s: %s", held.lease_id, exc.code)
            self._deps.health.ok(binding.broker_url)
            log.info("lease released: encoder %s, lease %s", self.encoder, held.lease_id)
        await self._store(None)

    async def release_on_stop(self, deadline: float) -> bool:
        """Give the encoder's seats back before the agent exits (by ``deadline``, monotonic).

        True when done.

        Uses ``count: 0`` on (server, encoder), which also frees a lease whose grant was
        in flight when the keeper was stopped and so never recorded.
        """
        r = self.record
        held = r.held
        if held is None and not self._in_flight:
            return True
        domain = held.domain if held is not None else (r.want.domain if r.want else None)
        binding = self._binding(domain)
        if binding is None:
            return False
        licence_type = held.licence_type if held else (r.want.licence_type if r.want else "")
        try:
            await self._release_all(binding, licence_type, deadline)
        except BrokerRefused as exc:
            log.debug("release of encoder %s on stop: %s", self.encoder, exc.code)
        except Retryable as exc:
            log.warning("could not release encoder %s on stop: %s", self.encoder, exc)
            return False
        if held is not None:
            log.info("lease released: encoder %s, lease %s", self.encoder, held.lease_id)
        r.held = None
        self._in_flight = False
        return True

    async def _release_all(self, binding: Binding, licence_type: str, deadline: float) -> None:
        """``count: 0`` on (server, encoder) through ``binding``, retried until ``deadline``
        (monotonic); raises what the broker last said if it did not take it."""
        client = self._deps.client(binding.broker_url)
        clock = self._deps.clock

        def wait(state: RetryCallState) -> float:
            return backoff_delay(
                state.attempt_number,
                initial=STOP_RETRY.initial,
                cap=STOP_RETRY.cap,
                rng=self._deps.rng,
                time_left=deadline - clock.monotonic(),
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Retryable),
            wait=wait,
            stop=lambda _s: clock.monotonic() >= deadline,
            sleep=clock.sleep,
            reraise=True,
        )
        await retrying(client.acquire, binding.token, self.encoder, licence_type, 0)

    def on_binding(self, binding: Binding) -> bool:
        """True if this encoder holds a lease under ``binding``, or would ask through it."""
        r = self.record
        if r.held is not None and r.held.server_id == binding.server_id:
            return True
        return r.want is not None and r.want.domain == binding.domain

    async def hand_back(self, binding: Binding, deadline: float) -> bool:
        """Before ``binding`` is replaced, give back what this encoder holds under it.

        The keeper's task must be stopped (``cancel``) first, and started again once the
        bindings have changed; the wish stands. ``count: 0`` also frees a grant that was
        in flight when the task stopped. True if a lease was held under ``binding`` and
        the broker took it back; False if none was; ``BrokerRefused`` or ``Retryable``
        if the broker did not take it (the lease is then still recorded as held, unless
        the refusal is ``unauthenticated``: the broker removed the binding and its leases).
        """
        r = self.record
        held = r.held if r.held is not None and r.held.server_id == binding.server_id else None
        if held is None and (r.want is None or r.want.domain != binding.domain):
            return False
        licence_type = held.licence_type if held else (r.want.licence_type if r.want else "")
        try:
            await self._release_all(binding, licence_type, deadline)
        except BrokerRefused as exc:
            if exc.code == "unauthenticated" and held is not None:
                r.held = None  # the broker removed the binding, and its leases with it
                self._announce()
            raise
        if held is not None:
            log.info("lease released before re-enrolment: encoder %s, lease %s", self.encoder, held.lease_id)
            r.held = None
        self._offline = False
        self._announce()
        return held is not None
