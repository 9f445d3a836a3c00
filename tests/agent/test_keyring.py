"""Only tokens signed by the broker's keys, for the lease asked about, are accepted."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import TokenRejected
from agent.keyring import REFRESH_INTERVAL, KeyRing
from shared import jws
from shared.secret import Secret
from shared.wire import Lease
from tests.agent.harness import T0
from tests.agent.proxy import tamper

SIGNER = jws.SigningKey.generate()
ROTATED = jws.SigningKey.generate()
STRANGER = jws.SigningKey.generate()


def jwks(*keys: jws.SigningKey) -> dict[str, Any]:
    return {"keys": [jws.jwk(k.private.public_key()) for k in keys]}


def grant(key: jws.SigningKey = SIGNER, **changes: Any) -> Lease:
    claims = {
        "iss": "tenure",
        "sub": "ENC-1",
        "lid": "lse_1",
        "est": "est_1",
        "pool": "pool_1",
        "srv": "srv_1",
        "lt": "one-in-one-out",
        "n": 3,
        "iat": int(T0),
        "nbf": int(T0),
        "exp": int(T0) + 300,
    }
    claims.update(changes)
    return Lease(
        id="lse_1",
        token=Secret(jws.sign(claims, key)),
        encoder="ENC-1",
        count=3,
        licence_type="one-in-one-out",
        pool_id="pool_1",
        expires_at=int(T0) + 300,
        renew_after=int(T0) + 100,
        lease_seconds=300,
        server_time=int(T0),
        state="valid",
        seats=(),
    )


class Keys:
    """What GET /v1/keys would answer, and how often it was asked."""

    def __init__(self, *keys: jws.SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.now = T0

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        return jwks(*self.keys)


async def verify(ring: KeyRing, g: Lease, broker_now: float | None = None) -> dict[str, Any]:
    at = float(g.server_time) if broker_now is None else broker_now
    return await ring.verify(g, encoder="ENC-1", server_id="srv_1", estate_id="est_1", broker_now=lambda: at)


async def test_a_good_token_verifies() -> None:
    keys = Keys(SIGNER)
    ring = KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now)
    assert (await verify(ring, grant()))["n"] == 3
    assert keys.fetches == 0


async def test_a_tampered_token_is_rejected() -> None:
    keys = Keys(SIGNER)
    ring = KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now)
    g = grant()
    forged = Lease(**{**g.__dict__, "token": Secret(tamper(g.token.reveal()))})
    with pytest.raises(TokenRejected, match="bad signature"):
        await verify(ring, forged)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", "ENC-2"),
        ("lid", "lse_2"),
        ("n", 4),
        ("lt", "four-in-one-out"),
        ("srv", "srv_2"),
        ("est", "est_2"),
        ("exp", int(T0) + 3000),
    ],
)
async def test_a_token_for_something_else_is_rejected(claim: str, value: Any) -> None:
    keys = Keys(SIGNER)
    ring = KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now)
    with pytest.raises(TokenRejected):
        await verify(ring, grant(**{claim: value}))


async def test_an_expired_token_is_rejected_by_the_brokers_own_time() -> None:
    keys = Keys(SIGNER)
    ring = KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now)
    g = grant(exp=int(T0) - 120)
    stale = Lease(**{**g.__dict__, "expires_at": int(T0) - 120})
    with pytest.raises(TokenRejected, match="expired"):
        await verify(ring, stale)


async def test_an_unknown_kid_fetches_the_key_set_once() -> None:
    keys = Keys(SIGNER, ROTATED)
    remembered: list[dict[str, Any]] = []
    ring = KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now, on_refresh=remembered.append)
    assert (await verify(ring, grant(ROTATED)))["n"] == 3
    assert keys.fetches == 1
    assert remembered == [jwks(SIGNER, ROTATED)]
    assert (await verify(ring, grant(ROTATED)))["n"] == 3
    assert keys.fetches == 1


async def test_a_stranger_key_is_rejected_and_fetches_are_rate_limited() -> None:
    keys = Keys(SIGNER)
    ring = KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now)
    with pytest.raises(TokenRejected, match="unknown"):
        await verify(ring, grant(STRANGER))
    with pytest.raises(TokenRejected, match="unknown"):
        await verify(ring, grant(STRANGER))
    assert keys.fetches == 1
    keys.now += REFRESH_INTERVAL
    with pytest.raises(TokenRejected):
        await verify(ring, grant(STRANGER))
    assert keys.fetches == 2


async def test_expiry_is_judged_on_the_brokers_clock_and_without_leeway() -> None:
    keys = Keys(SIGNER)
    ring = KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now)
    g = grant()  # server_time T0, exp T0 + 300
    assert (await verify(ring, g, broker_now=T0 + 299.5))["n"] == 3
    # The nbf leeway (clock granularity) does not stretch the expiry.
    for late in (T0 + 300, T0 + 330):
        with pytest.raises(TokenRejected, match="expired"):
            await verify(ring, g, broker_now=late)


async def test_a_key_fetch_that_outlasts_the_token_is_not_a_pass() -> None:
    """The broker's time is read again after the fetch: a slow fetch counts."""
    elapsed = [0.0]

    async def slow_fetch() -> dict[str, Any]:
        elapsed[0] += 400  # the fetch took longer than the lease's lifetime
        return jwks(SIGNER, ROTATED)

    ring = KeyRing([jwks(SIGNER)], slow_fetch, monotonic=lambda: T0 + elapsed[0])
    g = grant(ROTATED)
    with pytest.raises(TokenRejected, match="expired"):
        await ring.verify(
            g, encoder="ENC-1", server_id="srv_1", estate_id="est_1", broker_now=lambda: g.server_time + elapsed[0]
        )
