"""When a granted lease is renewed, and when it stops being served, on our own clock.

The broker states a lease's times on its clock (``server_time``, ``renew_after``,
``expires_at``); the agent keeps them as intervals measured on its monotonic clock from
the moment it asked. The host's wall clock, however wrong or stepped, never enters, except
to remember the deadline across a reboot (``wall_deadline``).
"""

from __future__ import annotations

import random

from agent.bindings import Binding
from agent.records import Held
from shared.wire import Lease

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


def held_from_grant(
    grant: Lease,
    binding: Binding,
    *,
    sent_at: float,
    sent_wall: float,
    boot_id: str,
    rng: random.Random,
) -> Held:
    """The lease ``grant`` (already verified) as held under ``binding``.

    ``sent_at`` and ``sent_wall`` are the monotonic and wall readings when the request
    that won it left; ``boot_id`` names the monotonic clock's origin. The deadline is
    ``sent_at`` plus the broker's lifetime, less ``deadline_margin``; renewal falls at
    ``renew_after`` plus up to ``RENEW_JITTER`` of the window left, never past the
    deadline.
    """
    # The lifetime is the broker's (expiry less its own time of answering), measured on
    # our monotonic clock from when we asked, which is no later than when it answered.
    lifetime = grant.expires_at - grant.server_time
    deadline = sent_at + lifetime - deadline_margin(lifetime)
    renew_after = sent_at + (grant.renew_after - grant.server_time)
    window = max(0.0, deadline - renew_after)
    renew_at = renew_after + rng.uniform(0, window * RENEW_JITTER)
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
        boot_id=boot_id,
        purchase_state=grant.state,
        seats=grant.seats,
    )
