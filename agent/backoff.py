"""How long to wait before trying the broker again.

``backoff_delay`` is "full jitter" exponential backoff: attempt ``n`` waits a uniformly
random time in ``[0, min(cap, initial * 2**(n-1))]``, so that a fleet cut off together
does not come back together. Every delay has jitter and a bound:

- a broker's ``Retry-After`` is honoured up to ``cap``, plus up to a tenth more of
  jitter (never more than ``1.1 * cap`` in all);
- ``time_left`` (the held lease's time to its deadline) bounds every delay, so that a
  retry is never scheduled past the moment the lease stops being served. A retry is
  bounded by time, never by a bare count of attempts.

The function is pure: the random source is passed in, and nothing reads a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Past 2**60 the ceiling is the cap anyway; the bound keeps the float arithmetic finite.
_MAX_DOUBLINGS = 60
# Jitter added on top of a broker's Retry-After, as a fraction of it.
RETRY_AFTER_JITTER = 0.1


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The first retry's ceiling (``initial``) and every retry's (``cap``), in seconds."""

    initial: float = 1.0
    cap: float = 60.0


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    cap: float,
    rng: random.Random,
    retry_after: float | None = None,
    time_left: float | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

    ``retry_after`` is what the broker asked for, if anything; ``time_left`` is the time
    until a held lease's deadline, if a lease is held. The result is never negative,
    never more than ``time_left``, and never more than ``cap`` (``1.1 * cap`` when the
    broker asked for a ``retry_after`` beyond it).
    """
    doublings = min(max(0, attempt - 1), _MAX_DOUBLINGS)
    delay = rng.uniform(0, min(cap, initial * 2.0**doublings))
    if retry_after:
        delay = max(delay, min(retry_after, cap))
        delay += rng.uniform(0, delay * RETRY_AFTER_JITTER)
    if time_left is not None:
        delay = min(delay, max(0.0, time_left))
    return delay
