"""Retry delays: full jitter, exponential, capped, bounded by the lease's deadline."""

from __future__ import annotations

import random

import pytest

from agent.backoff import backoff_delay


def delays(attempt: int, *, samples: int = 400, seed: int = 7, **kwargs: float | None) -> list[float]:
    rng = random.Random(seed)
    params: dict[str, float] = {"initial": 1.0, "cap": 60.0}
    params.update({k: v for k, v in kwargs.items() if k in params and v is not None})
    return [
        backoff_delay(
            attempt,
            initial=params["initial"],
            cap=params["cap"],
            rng=rng,
            retry_after=kwargs.get("retry_after"),
            time_left=kwargs.get("time_left"),
        )
        for _ in range(samples)
    ]


@pytest.mark.parametrize("attempt", range(1, 15))
def test_delays_grow_with_full_jitter_up_to_the_cap(attempt: int) -> None:
    ceiling = min(60.0, 2.0 ** (attempt - 1))
    got = delays(attempt)
    assert all(0 <= d <= ceiling for d in got)
    assert max(got) > ceiling * 0.9  # the jitter spans the whole window...
    assert min(got) < ceiling * 0.1  # ...from nothing to the ceiling


def test_initial_scales_the_first_ceilings() -> None:
    assert all(d <= 0.2 for d in delays(1, initial=0.2, cap=2.0))
    assert all(d <= 0.8 for d in delays(3, initial=0.2, cap=2.0))
    assert max(delays(3, initial=0.2, cap=2.0)) > 0.7
    assert all(d <= 2.0 for d in delays(9, initial=0.2, cap=2.0))


def test_a_huge_attempt_number_is_still_capped() -> None:
    got = delays(100_000)
    assert all(0 <= d <= 60.0 for d in got)
    assert max(got) > 50


def test_no_delay_passes_the_lease_deadline() -> None:
    assert all(d <= 7 for d in delays(12, time_left=7))
    assert max(delays(12, time_left=7)) == 7  # most draws exceed 7 s and are cut to it
    assert delays(12, time_left=0, samples=10) == [0.0] * 10
    assert delays(12, time_left=-3, samples=10) == [0.0] * 10  # past the deadline: at once


def test_retry_after_is_honoured_with_jitter() -> None:
    got = delays(1, retry_after=30)
    assert all(30 <= d <= 33 for d in got)
    assert max(got) - min(got) > 2  # jittered, not one instant for the whole fleet


def test_retry_after_beyond_the_cap_is_bounded() -> None:
    got = delays(1, retry_after=3600)
    assert all(60 <= d <= 66 for d in got)


def test_retry_after_is_bounded_by_the_deadline_too() -> None:
    assert all(d <= 5 for d in delays(1, retry_after=30, time_left=5))


def test_the_same_seed_gives_the_same_delays() -> None:
    assert delays(5, seed=11) == delays(5, seed=11)
    assert delays(5, seed=11) != delays(5, seed=12)
