"""One encoder's lease, kept in line with what the encoder wants.

A ``Keeper`` task drives its encoder's lease:

- **acquire** (or grow, shrink, change type) when nothing matching is held;
- **renew** at ``renew_after`` plus a little jitter, so that a fleet started together
  does not renew together;
- **release** when the encoder no longer wants a lease.

A retryable failure (broker away, 429, 5xx, a token that does not verify) is retried with
tenacity: exponential backoff with full jitter, capped at ``retry_max``, and never past
the held lease's local deadline. While the broker is away a valid lease is still served
(state ``offline``); at its deadline the encoder is told it is ``lost`` and the agent
keeps trying to acquire again, at the capped rate, for as long as the encoder wants one.
A renewal answered ``lease_gone`` with reason ``lapsed`` (or a lease the broker no longer
knows) is likewise acquired again. A final refusal stops the trying until the encoder
asks again: ``denied`` (e.g. ``pool_exhausted``) or ``revoked`` (an admin released or
revoked the lease, or removed this server: re-acquiring on our own would undo the admin,
DESIGN.md §2.8).

Encoder-visible states: ``pending``, ``active``, ``offline``, ``lost``, ``revoked``,
``denied``, and while a wish is being withdrawn ``releasing``/``released``.

What the keepers share (bindings, clients, keys, the clock, persistence) is the
``Runner``'s, in ``agent/runner.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_random_exponential

from agent.bindings import Binding
from agent.clock import wait_event
from agent.errors import BrokerRefused, BrokerUnavailable, Retryable, TokenRejected
from agent.records import EncoderRecord, Held, Want
from shared.timefmt import format_ts
from shared.wire import Lease as LeaseGrant

if TYPE_CHECKING:
    from agent.runner import Runner

log = logging.getLogger(__name__)

# Renew somewhere in the first tenth of the window between renew_after and expiry.
RENEW_JITTER = 0.1
# Stop serving a lease this long before the broker expires it: its server_time and exp
# are whole seconds (the broker may have been up to a second past server_time when it
# answered), and a monotonic clock may run fast by up to NTP's slew limit (500 ppm).
DEADLINE_MARGIN = 1.0
DEADLINE_DRIFT = 0.001


def deadline_margin(lifetime: float) -> float:
    """Seconds to stop serving a lease of ``lifetime`` seconds before its expiry."""
    return DEADLINE_MARGIN + DEADLINE_DRIFT * max(0.0, lifetime)


class _Woken(Exception):
    """The encoder changed its wish while we were waiting to retry."""




class Keeper:
    """Keeps one encoder's lease in line with what the encoder wants."""

    def __init__(self, record: EncoderRecord, runner: Runner) -> None:
        self.record = record
        self.runner = runner
        self.encoder = record.encoder
        self.version = runner.next_version()
        self.offline = False
        self.lost = False
        self.in_flight = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()

    # ------------------------------------------------------------------ outside view

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"keeper {self.encoder}")

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def wake(self) -> None:
        self._wake.set()

    def changed(self) -> None:
        """Bump the version and wake everyone waiting for a change."""
        self.version = self.runner.next_version()
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, version: int, within: float) -> None:
        """Return when the version is no longer ``version``, or ``within`` seconds (clock)."""
        deadline = self.runner.clock.monotonic() + within
        while self.version == version and not self.finished.is_set():
            left = deadline - self.runner.clock.monotonic()
            if left <= 0:
                return
            event = self._changed
            waiter = asyncio.ensure_future(event.wait())
            finished = asyncio.ensure_future(self.finished.wait())
            sleeper = asyncio.ensure_future(self.runner.clock.sleep(left))
            try:
                await asyncio.wait({waiter, finished, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, finished, sleeper):
                    task.cancel()
                await asyncio.gather(waiter, finished, sleeper, return_exceptions=True)

    def state(self, now: float | None = None) -> str:
        """The encoder-visible state; ``now`` is on the monotonic clock."""
        now = self.runner.clock.monotonic() if now is None else now
        r = self.record
        if r.want is None:
            return "releasing" if r.held is not None else "released"
        if r.held is not None and now < r.held.deadline:
            return "offline" if self.offline else "active"
        if r.halted is not None:
            return r.halted
        if self.lost or r.held is not None:
            return "lost"
        return "pending"

    def view(self, *, with_token: bool = True) -> dict[str, Any]:
        """The encoder's lease as the local API shows it."""
        now = self.runner.clock.monotonic()
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
        clock = self.runner.clock
        while True:
            self._wake.clear()
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
                await wait_event(clock, self._wake, None)
                continue
            if r.held is not None and (r.halted is not None or self._matches(r.held, r.want)):
                if await wait_event(clock, self._wake, r.held.renew_at - clock.monotonic()):
                    continue
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
        base = wait_random_exponential(multiplier=self.runner.retry_initial, max=self.runner.retry_max)(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            base = max(base, min(retry_after, self.runner.retry_max))
            base += self.runner.rng.uniform(0, base * 0.1)
        held = self.record.held
        if held is not None:
            base = min(base, max(0.0, held.deadline - self.runner.clock.monotonic()))
        return base

    def _give_up(self, state: RetryCallState) -> bool:
        held = self.record.held
        return held is not None and self.runner.clock.monotonic() >= held.deadline

    async def _sleep(self, seconds: float) -> None:
        if await wait_event(self.runner.clock, self._wake, seconds):
            raise _Woken

    def _failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Retryable):
            self._note(exc)

    def _note(self, exc: Retryable) -> None:
        """A retryable failure: the encoder hears that the agent is offline (or why not)."""
        if isinstance(exc, BrokerUnavailable):
            self.runner.health.failed(exc.url, exc)
            error = {"code": "broker_unavailable", "detail": str(exc)}
        else:
            log.warning("encoder %s: %s; not served, trying again", self.encoder, exc)
            error = {"code": "token_rejected", "detail": str(exc)}
        before = (self.state(), self.record.error)
        self.offline = True
        self.record.error = error
        if (self.state(), self.record.error) != before:
            self.changed()

    def _finish(self) -> None:
        self.runner.forget(self)
        self.finished.set()
        self.changed()

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
        self.lost = True
        self.changed()
        self._save_later()

    def revoke(self, code: str, detail: str) -> None:
        held = self.record.held
        log.warning("lease revoked: encoder %s (%s)", self.encoder, code)
        self.record.held = None
        self.record.halted = "revoked"
        self.record.error = {"code": code, "detail": detail}
        self.offline = False
        self.changed()
        if held is not None:
            self._save_later()

    def _save_later(self) -> None:
        self.runner.spawn(self.runner.save())

    # ------------------------------------------------------------------ broker calls

    def _binding(self, domain: str | None) -> Binding | None:
        return self.runner.bindings().get(domain)

    async def _accept(
        self, grant: LeaseGrant, binding: Binding, sent: tuple[float, float], want: Want | None
    ) -> Held:
        """Verify ``grant`` and turn it into a ``Held`` lease on our own monotonic clock.

        ``sent`` is (monotonic, wall) when the request that won it left.
        """
        if want is not None and (grant.count != want.count or grant.licence_type != want.licence_type):
            raise TokenRejected("the lease granted does not match the request")
        clock = self.runner.clock
        received = clock.monotonic()

        def broker_now() -> float:
            return grant.server_time + (clock.monotonic() - received)

        await self.runner.keyring(binding.broker_url).verify(
            grant,
            encoder=self.encoder,
            server_id=binding.server_id,
            estate_id=binding.estate_id,
            broker_now=broker_now,
        )
        # The lifetime is the broker's (expiry less its own time of answering), measured
        # on our monotonic clock from when we asked, which is no later than when it
        # answered: the host's clock, however wrong or stepped, never enters.
        sent_at, sent_wall = sent
        lifetime = grant.expires_at - grant.server_time
        deadline = sent_at + lifetime - deadline_margin(lifetime)
        renew_after = sent_at + (grant.renew_after - grant.server_time)
        window = max(0.0, deadline - renew_after)
        renew_at = renew_after + self.runner.rng.uniform(0, window * RENEW_JITTER)
        return Held(
            lease_id=grant.id,
            token=grant.token,
            licence_type=grant.licence_type,
            count=grant.count,
            domain=binding.domain,
            server_id=binding.server_id,
            expires_at=grant.expires_at,
            renew_after=grant.renew_after,
            server_time=grant.server_time,
            deadline=deadline,
            renew_at=min(renew_at, deadline),
            wall_deadline=sent_wall + (deadline - sent_at),
            boot_id=clock.boot_id(),
            purchase_state=grant.state,
            seats=grant.seats,
        )

    def _sent(self) -> tuple[float, float]:
        clock = self.runner.clock
        return clock.monotonic(), clock.wall()

    async def _store(self, held: Held | None) -> None:
        self.record.held = held
        self.record.error = None
        self.offline = False
        if held is not None:
            self.lost = False
        self.changed()
        await self.runner.save()

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
            self.changed()
            await self.runner.save()
            return
        if r.held is not None and r.held.server_id != binding.server_id:
            await self._release()  # moving to another binding: give the old seats back
        client = self.runner.client(binding.broker_url)
        sent = self._sent()
        self.in_flight = True
        try:
            grant = await client.acquire(binding.token, self.encoder, want.licence_type, want.count)
        except BrokerRefused as exc:
            self.runner.health.ok(binding.broker_url)
            await self._refused(exc, binding)
            return
        finally:
            self.in_flight = False
        self.runner.health.ok(binding.broker_url)
        if grant is None:
            raise BrokerUnavailable(binding.broker_url, "acquire answered with no lease")
        held = await self._accept(grant, binding, sent, want)
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
            self.runner.revoke_binding(binding, "server_removed")
            self.revoke("server_removed", "this server or domain was removed by an administrator")
            await self.runner.save()
            return
        log.warning("lease denied: encoder %s (%s)", self.encoder, exc)
        r.halted = "denied"
        error: dict[str, Any] = {"code": exc.code, "detail": exc.detail or str(exc)}
        if isinstance(exc.body.get("available"), int):
            error["available"] = exc.body["available"]
        r.error = error
        self.offline = False
        self.changed()
        await self.runner.save()

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
        client = self.runner.client(binding.broker_url)
        sent = self._sent()
        try:
            grant = await client.renew(binding.token, held.lease_id)
        except BrokerRefused as exc:
            self.runner.health.ok(binding.broker_url)
            reason = exc.body.get("reason")
            if exc.code == "lease_gone" and reason in ("released", "revoked"):
                self.revoke(f"lease_{reason}", f"the lease was {reason} by an administrator")
                await self.runner.save()
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
                self.lost = True
                await self._store(None)
            return
        self.runner.health.ok(binding.broker_url)
        fresh = await self._accept(grant, binding, sent, None)
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
                await self.runner.client(binding.broker_url).release(binding.token, held.lease_id)
            except BrokerRefused as exc:
                log.debug("release of lease %s: %s", held.lease_id, exc.code)
            self.runner.health.ok(binding.broker_url)
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
        if held is None and not self.in_flight:
            return True
        domain = held.domain if held is not None else (r.want.domain if r.want else None)
        binding = self._binding(domain)
        if binding is None:
            return False
        licence_type = held.licence_type if held else (r.want.licence_type if r.want else "")
        client = self.runner.client(binding.broker_url)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Retryable),
            wait=wait_random_exponential(multiplier=0.2, max=2.0),
            stop=lambda _s: self.runner.clock.monotonic() >= deadline,
            sleep=self.runner.clock.sleep,
            reraise=True,
        )
        try:
            await retrying(client.acquire, binding.token, self.encoder, licence_type, 0)
        except BrokerRefused as exc:
            log.debug("release of encoder %s on stop: %s", self.encoder, exc.code)
        except Retryable as exc:
            log.warning("could not release encoder %s on stop: %s", self.encoder, exc)
            return False
        if held is not None:
            log.info("lease released: encoder %s, lease %s", self.encoder, held.lease_id)
        r.held = None
        self.in_flight = False
        return True
