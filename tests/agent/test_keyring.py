"""Only tokens signed by the broker's keys, for the lease asked about, are accepted."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import Config
from agent.errors import BrokerUnavailable, TokenRejected
from agent.keyring import MAX_KEY_SET_AGE, REFRESH_INTERVAL, KeyRing, signed_by
from shared import jws
from shared.secret import Secret
from shared.wire import Lease
from tests.agent.harness import T0, AgentFactory, LiveBroker, enroll_agent
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


async def test_a_key_the_broker_withdrew_is_kept_while_a_held_token_needs_it_then_forgotten() -> None:
    keys = Keys(ROTATED)  # the broker has rotated, and no longer publishes SIGNER
    held: set[str] = {SIGNER.kid}  # a token signed by SIGNER is still held, unexpired
    remembered: list[dict[str, Any]] = []
    ring = KeyRing(
        [jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now, on_refresh=remembered.append, in_use=lambda: held
    )
    assert (await verify(ring, grant(ROTATED)))["n"] == 3  # unknown kid: the set is fetched
    assert keys.fetches == 1 and remembered == [jwks(ROTATED)]
    assert ring.kids == {SIGNER.kid, ROTATED.kid}
    assert (await verify(ring, grant(SIGNER)))["n"] == 3  # still needed: still trusted

    held.clear()  # that token has expired (or was released)
    assert (await verify(ring, grant(ROTATED)))["n"] == 3
    assert ring.kids == {ROTATED.kid}
    keys.now += REFRESH_INTERVAL  # a fetch is allowed: the broker still does not have it
    with pytest.raises(TokenRejected, match="unknown signing key"):
        await verify(ring, grant(SIGNER))


async def test_a_restart_forgets_what_the_stored_key_set_no_longer_holds() -> None:
    """The last key set read from the broker is stored; at start, keys pinned at
    enrolment that it lacks are dropped, unless a held token needs them."""
    keys = Keys(ROTATED)
    ring = KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now, published=jwks(ROTATED))
    assert ring.kids == {ROTATED.kid}
    kept = KeyRing(
        [jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now, published=jwks(ROTATED), in_use=lambda: {SIGNER.kid}
    )
    assert kept.kids == {SIGNER.kid, ROTATED.kid}
    # Never read from the broker: nothing is known to be withdrawn, nothing is dropped.
    assert KeyRing([jwks(SIGNER)], keys.fetch, monotonic=lambda: keys.now).kids == {SIGNER.kid}
    assert keys.fetches == 0


async def test_the_key_set_is_read_again_after_a_day() -> None:
    keys = Keys(SIGNER, ROTATED)
    ring = KeyRing([jwks(SIGNER, ROTATED)], keys.fetch, monotonic=lambda: keys.now)
    assert (await verify(ring, grant(ROTATED)))["n"] == 3
    assert keys.fetches == 0
    keys.keys = [ROTATED]  # the broker withdraws SIGNER; no rotation tells the agent
    keys.now += MAX_KEY_SET_AGE
    assert (await verify(ring, grant(ROTATED)))["n"] == 3
    assert keys.fetches == 1
    assert ring.kids == {ROTATED.kid}


async def test_a_failed_daily_read_keeps_the_pinned_keys() -> None:
    async def away() -> dict[str, Any]:
        raise BrokerUnavailable("https://licences.example.com", "connection refused")

    now = [T0]
    ring = KeyRing([jwks(SIGNER)], away, monotonic=lambda: now[0])
    now[0] += MAX_KEY_SET_AGE
    assert (await verify(ring, grant(SIGNER)))["n"] == 3
    assert ring.kids == {SIGNER.kid}


async def test_the_host_names_the_keys_of_the_tokens_it_holds(
    live_broker: LiveBroker, agent_config: Config, start_agent: AgentFactory
) -> None:
    """What ``in_use`` is fed: the kid of each unexpired token held, none once released."""
    await enroll_agent(agent_config, live_broker.url, await live_broker.code())
    agent = await start_agent()
    await agent.want("ENC-1", 2)
    await agent.wait_state("ENC-1", "active")
    view = await agent.lease("ENC-1")
    broker_kids = {k["kid"] for k in (await live_broker.call("GET", "/v1/keys"))["keys"]}
    host = agent.daemon.host
    assert host.kids_in_use() == {signed_by(view["lease"]["token"])} <= broker_kids
    status, _ = await agent.call("DELETE", "/v1/encoders/ENC-1/lease?wait=5")
    assert status == 200
    assert host.kids_in_use() == set()
