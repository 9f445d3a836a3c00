"""A granted lease on our own clock: deadline, renewal time, and what survives a reboot."""

from __future__ import annotations

import random

from agent.bindings import Binding
from agent.deadlines import RENEW_JITTER, deadline_margin, held_from_grant
from shared.secret import Secret
from shared.wire import Lease

SERVER_TIME = 1_798_761_600  # the broker's clock when it answered
LIFETIME = 300


def grant(lifetime: int = LIFETIME) -> Lease:
    return Lease(
        id="lease-1",
        token=Secret("t"),
        encoder="ENC-1",
        count=2,
        licence_type="one-in-one-out",
        pool_id="p",
        expires_at=SERVER_TIME + lifetime,
        renew_after=SERVER_TIME + lifetime // 3,
        lease_seconds=lifetime,
        server_time=SERVER_TIME,
        state="valid",
        seats=(),
    )


def binding(kind: str = "server", name: str = "enc-host-7") -> Binding:
    return Binding(
        kind=kind,
        name=name,
        server_id="srv-1",
        token=Secret("s"),
        estate_id="e",
        estate_name="E",
        pool_id="p",
        pool_name="P",
        broker_url="https://b",
        keys={},
        enrolled_at=0,
    )


def test_the_deadline_is_the_lifetime_from_when_we_asked_less_the_margin() -> None:
    # The host's calendar (sent_wall) is a year off: it moves wall_deadline alone.
    held = held_from_grant(
        grant(), binding(), sent_at=1000.0, sent_wall=SERVER_TIME + 365 * 86400, boot_id="boot-1", rng=random.Random(1)
    )
    assert held.deadline == 1000.0 + LIFETIME - deadline_margin(LIFETIME)
    assert deadline_margin(LIFETIME) == 1.0 + 0.001 * LIFETIME
    assert held.wall_deadline == SERVER_TIME + 365 * 86400 + held.deadline - 1000.0
    assert (held.boot_id, held.server_id, held.domain) == ("boot-1", "srv-1", None)
    assert (held.expires_at, held.server_time) == (SERVER_TIME + LIFETIME, SERVER_TIME)


def test_renewal_falls_in_the_first_tenth_of_the_window_after_renew_after() -> None:
    rng = random.Random(3)
    renew_after = 1000.0 + LIFETIME // 3
    window = (1000.0 + LIFETIME - deadline_margin(LIFETIME)) - renew_after
    times = [
        held_from_grant(grant(), binding(), sent_at=1000.0, sent_wall=0.0, boot_id="", rng=rng).renew_at
        for _ in range(300)
    ]
    assert all(renew_after <= t <= renew_after + window * RENEW_JITTER for t in times)
    assert max(times) - min(times) > window * RENEW_JITTER * 0.8  # a fleet spreads out


def test_renewal_is_never_after_the_deadline() -> None:
    # A lease so short that the margin eats it: renew at once, serve not at all.
    held = held_from_grant(grant(lifetime=1), binding(), sent_at=50.0, sent_wall=0.0, boot_id="", rng=random.Random(0))
    assert held.deadline < 50.0 + 1
    assert held.renew_at <= held.deadline


def test_a_domain_binding_names_its_domain() -> None:
    held = held_from_grant(
        grant(), binding("domain", "tenant-a"), sent_at=0.0, sent_wall=0.0, boot_id="", rng=random.Random(0)
    )
    assert held.domain == "tenant-a"
