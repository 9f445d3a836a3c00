"""Retry delays: full jitter, exponential, capped, bounded by the lease's deadline."""

from __future__ import annotations

import random

from tenacity import RetryCallState, Retrying

from agent.errors import BrokerUnavailable
from agent.keeper import Keeper
from agent.records import EncoderRecord, Held, LeaseState, Want
from agent.runner import Runner
from shared.secret import Secret
from tests.agent.conftest import FakeClock


def keeper(clock: FakeClock, held: Held | None = None) -> Keeper:
    async def save() -> None:
        return None

    runner = Runner(LeaseState(), bindings=lambda: None,  # type: ignore[arg-type,return-value]
                    client=None, keyring=None,  # type: ignore[arg-type]
                    save=save, clock=clock, retry_initial=1.0, retry_max=60.0,
                    rng=random.Random(7))
    return Keeper(EncoderRecord("ENC-1", want=Want("one-in-one-out", 1), held=held), runner)


def attempt(n: int, exc: Exception) -> RetryCallState:
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = n
    state.set_exception((type(exc), exc, None))
    return state


def held(deadline: float) -> Held:
    return Held(lease_id="l", token=Secret("t"), licence_type="one-in-one-out", count=1,
                domain=None, server_id="s", expires_at=0, renew_after=0, server_time=0,
                deadline=deadline, renew_at=deadline - 200, wall_deadline=0.0, boot_id="",
                purchase_state="valid")


async def test_delays_grow_with_full_jitter_up_to_the_cap() -> None:
    k = keeper(FakeClock())
    away = BrokerUnavailable("https://b", "connection refused")
    for n in range(1, 15):
        ceiling = min(60.0, 2.0 ** (n - 1))
        delays = [k._backoff(attempt(n, away)) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays), n
        assert max(delays) > ceiling * 0.8  # jitter spans the whole window
        assert min(delays) < ceiling * 0.2


async def test_no_delay_passes_the_lease_deadline() -> None:
    clock = FakeClock()
    k = keeper(clock, held(clock.monotonic() + 7))
    away = BrokerUnavailable("https://b", "connection refused")
    assert all(k._backoff(attempt(12, away)) <= 7 for _ in range(100))
    assert not k._give_up(attempt(12, away))
    await clock.advance(7)
    assert k._give_up(attempt(13, away))
    assert k._backoff(attempt(13, away)) == 0


async def test_without_a_lease_retries_never_give_up() -> None:
    k = keeper(FakeClock())
    assert not k._give_up(attempt(10_000, BrokerUnavailable("https://b", "x")))


async def test_retry_after_is_honoured_within_the_cap() -> None:
    k = keeper(FakeClock())
    busy = BrokerUnavailable("https://b", "rate limited", retry_after=30)
    assert all(30 <= k._backoff(attempt(1, busy)) <= 33 for _ in range(50))
    flood = BrokerUnavailable("https://b", "rate limited", retry_after=3600)
    assert all(k._backoff(attempt(1, flood)) <= 66 for _ in range(50))
