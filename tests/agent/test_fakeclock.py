"""The harness's manual clock: a sleeper wakes at the time it asked for, however it is scheduled."""

from __future__ import annotations

import asyncio

from tests.agent.harness import FakeClock, settle


async def test_a_sleep_wrapped_in_a_task_keeps_the_deadline_it_was_asked_for() -> None:
    clock = FakeClock()
    # The task has not run yet when time moves: its deadline must still be now + 10.
    sleeper = asyncio.ensure_future(clock.sleep(10))
    await clock.advance(10)
    await settle()
    assert sleeper.done()


async def test_a_sleeper_is_not_woken_early() -> None:
    clock = FakeClock()
    sleeper = asyncio.ensure_future(clock.sleep(10))
    await settle()
    await clock.advance(9.9)
    assert not sleeper.done()
    await clock.advance(0.1)
    assert sleeper.done()
