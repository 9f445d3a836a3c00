"""Expiry, grace, hold, lapse and lease lifetime, driven by the injected clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from broker import reaper
from broker.app import create_app
from broker.clock import ManualClock
from broker.services import SERVICES
from tests.broker.leasing import ONE, claims_of, make_site, seats_of, ts
from tests.conftest import DAY, Broker

MONTH = 30 * DAY


async def test_expired_purchase_renews_through_grace_but_never_past_it(broker: Broker) -> None:
    t0 = broker.clock.now()
    site = await make_site(broker, [("SO-1", 3, 1, ONE)])
    await site.set_lease_seconds(MONTH)
    grace_end = int(t0) + DAY + MONTH
    lease = await site.acquire("E1", 2, status=201)
    assert ts(lease["expires_at"]) == int(t0) + MONTH
    broker.clock.advance(DAY)  # the purchase has expired now
    assert (await site.holding("SO-1"))["state"] == "expired"
    view = await site.pool()
    assert view["in_use"] == 2 and view["available"] == 0
    refused = await site.acquire("E2", 1, status=409)
    assert refused["code"] == "pool_exhausted" and refused["available"] == 0
    assert (await site.acquire("E1", 3, status=409))["code"] == "pool_exhausted"  # no growing
    renewed = await site.renew(lease["id"], status=200)
    assert renewed["state"] == "expired"
    assert ts(renewed["expires_at"]) == grace_end  # capped: now + a month would pass it
    assert claims_of(renewed["token"])["exp"] == grace_end
    broker.clock.advance(MONTH - 3600)  # an hour before the grace ends
    renewed = await site.renew(lease["id"], status=200)
    assert ts(renewed["expires_at"]) == grace_end
    assert claims_of(renewed["token"])["exp"] <= grace_end
    broker.clock.advance(3600)  # the grace is over
    gone = await site.renew(lease["id"], status=410)
    assert gone["code"] == "lease_gone" and gone["reason"] == "lapsed"
    assert (await site.holding("SO-1"))["state"] == "ended"
    assert (await site.pool())["in_use"] == 0


async def test_short_leases_in_grace_are_capped_at_the_grace_end(broker: Broker) -> None:
    t0 = broker.clock.now()
    site = await make_site(broker, [("SO-1", 1, 1, ONE)])
    await site.set_lease_seconds(MONTH)
    lease = await site.acquire("E1", 1, status=201)
    broker.clock.advance(MONTH - 60)  # grace runs until t0 + 31 days
    await site.renew(lease["id"], status=200)
    await site.set_lease_seconds(3600)
    broker.clock.advance(DAY - 540)  # ten minutes of grace left
    renewed = await site.renew(lease["id"], status=200)
    grace_end = int(t0) + DAY + MONTH
    assert claims_of(renewed["token"])["exp"] == grace_end
    assert ts(renewed["renew_after"]) == int(broker.clock.now()) + 200  # a third of what is left


async def test_an_expired_purchase_grants_nothing_and_a_valid_one_takes_over(broker: Broker) -> None:
    site = await make_site(broker, [("SO-OLD", 2, 1, ONE), ("SO-NEW", 2, 365, ONE)])
    await site.set_lease_seconds(MONTH)
    lease = await site.acquire("E1", 3, status=201)
    assert seats_of(lease) == {"SO-OLD": 2, "SO-NEW": 1}
    broker.clock.advance(DAY - 60)
    renewed = await site.renew(lease["id"], status=200)
    broker.clock.advance(60)  # SO-OLD expires; the lease renews on grace
    renewed = await site.renew(lease["id"], status=200)
    assert renewed["state"] == "expired"
    body = await site.acquire("E2", 2, status=409)
    assert body["available"] == 1  # only SO-NEW's last seat


async def test_on_hold_is_like_expired_with_grace_from_the_hold(broker: Broker) -> None:
    t0 = broker.clock.now()
    site = await make_site(broker, [("SO-1", 3, 365, ONE)])
    await site.set_lease_seconds(MONTH)
    lease = await site.acquire("E1", 1, status=201)
    broker.clock.advance(DAY)
    held = await site.set_purchase("SO-1", status="on_hold")
    assert held["state"] == "on_hold"
    hold_grace_end = int(t0) + DAY + MONTH
    view = await site.pool()
    assert view["available"] == 0 and view["in_use"] == 1
    assert (await site.acquire("E2", 1, status=409))["available"] == 0
    assert (await site.acquire("E1", 2, status=409))["code"] == "pool_exhausted"
    broker.clock.advance(DAY)
    renewed = await site.renew(lease["id"], status=200)
    assert renewed["state"] == "on_hold"
    assert claims_of(renewed["token"])["exp"] == hold_grace_end  # not t0 + 2 days + a month
    # Lifting the hold restores it: new grants, and renewals no longer capped.
    await site.set_purchase("SO-1", status="valid")
    assert (await site.pool())["available"] == 2
    await site.acquire("E2", 1, status=201)
    renewed = await site.renew(lease["id"], status=200)
    assert claims_of(renewed["token"])["exp"] == int(broker.clock.now()) + MONTH


async def test_a_hold_past_its_grace_ends_the_lease(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    await site.set_lease_seconds(MONTH)
    lease = await site.acquire("E1", 1, status=201)
    await site.set_purchase("SO-1", status="on_hold")
    broker.clock.advance(MONTH - 1)
    await site.renew(lease["id"], status=200)
    broker.clock.advance(1)
    gone = await site.renew(lease["id"], status=410)
    assert gone["reason"] == "lapsed"


async def test_renew_of_a_gone_lease_says_why(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 5, 365, ONE)])
    released = await site.acquire("E1", 1, status=201)
    revoked = await site.acquire("E2", 1, status=201)
    lapsed = await site.acquire("E3", 1, status=201)
    await site.release(released["id"])
    await broker.call("DELETE", f"/v1/estates/{site.estate_id}/leases/{revoked['id']}", site.admin, status=204)
    broker.clock.advance(1800)
    await site.renew(released["id"], status=410)
    broker.clock.advance(1800)  # E3 was never renewed: it lapses at its exp
    for lease, reason in ((released, "released"), (revoked, "revoked"), (lapsed, "lapsed")):
        resp = await broker.client.post(f"/v1/leases/{lease['id']}/renew", headers=broker.auth(site.server), json={})
        assert resp.status == 410
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
        assert body["code"] == "lease_gone" and body["reason"] == reason, body
    # Refused renewals are in the audit log with their reason.
    refused = {e["subject_id"]: e["details"]["reason"] for e in await site.events("lease.renewal_refused")}
    assert refused == {released["id"]: "released", revoked["id"]: "revoked", lapsed["id"]: "lapsed"}


async def test_a_lease_not_renewed_frees_its_seats_at_exp(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 1, 365, ONE)])
    lease = await site.acquire("E1", 1, status=201)
    exp = ts(lease["expires_at"])
    broker.clock.set(exp - 1)
    view = await site.pool()
    assert view["in_use"] == 1 and view["available"] == 0
    assert (await site.acquire("E2", 1, status=409))["code"] == "pool_exhausted"
    broker.clock.set(exp)  # no request in between: capacity counts only live leases
    view = await site.pool()
    assert view["in_use"] == 0 and view["available"] == 1
    assert (await site.servers())[0]["in_use"] == 0
    assert await site.leases() == []
    taken = await site.acquire("E2", 1, status=201)
    assert taken["id"] != lease["id"]
    assert (await site.renew(lease["id"], status=410))["reason"] == "lapsed"
    lapses = [e for e in await site.events("lease.lapsed") if e["subject_id"] == lease["id"]]
    assert len(lapses) == 1 and lapses[0]["actor"]["kind"] == "system"
    assert lapses[0]["at"] == lease["expires_at"]


async def test_the_same_encoder_reacquires_after_a_lapse(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    lease = await site.acquire("E1", 2, status=201)
    broker.clock.advance(3600)
    again = await site.acquire("E1", 2, status=201)
    assert again["id"] != lease["id"]
    assert (await site.pool())["in_use"] == 2


async def test_the_reaper_records_lapses_without_any_request(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    client = await aiohttp_client(create_app(config_factory()))
    broker = Broker(client, operator_token, clock)
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    lease = await site.acquire("E1", 2, status=201)
    kept = await site.acquire("E2", 0, status=204)
    assert kept is None
    events = f"/v1/estates/{site.estate_id}/events?action=lease.lapsed"
    await reaper.lapse_due(client.app[SERVICES])
    assert (await broker.call("GET", events, site.admin, status=200))["items"] == []  # not due
    clock.advance(3600)
    await reaper.lapse_due(client.app[SERVICES])  # the reaper's next round
    lapses = (await broker.call("GET", events, site.admin, status=200))["items"]
    assert [e["subject_id"] for e in lapses] == [lease["id"]]
    assert lapses[0]["actor"]["kind"] == "system"
    assert lapses[0]["details"]["count"] == 2 and lapses[0]["details"]["encoder"] == "E1"


async def test_lease_lifetime_is_a_pool_setting(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, ONE)])
    await site.set_lease_seconds(600)
    now = int(broker.clock.now())
    lease = await site.acquire("E1", 1, status=201)
    assert ts(lease["server_time"]) == now
    assert ts(lease["expires_at"]) == now + 600
    assert ts(lease["renew_after"]) == now + 200
    assert lease["lease_seconds"] == 600
    claims = claims_of(lease["token"])
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (now, now, now + 600)
    broker.clock.advance(200)
    renewed = await site.renew(lease["id"], status=200)
    assert ts(renewed["expires_at"]) == now + 800 and ts(renewed["server_time"]) == now + 200
    await site.set_lease_seconds(90)
    renewed = await site.renew(lease["id"], status=200)
    assert ts(renewed["expires_at"]) == now + 290 and ts(renewed["renew_after"]) == now + 230
    for bad in (59, 30 * DAY + 1):
        await broker.call(
            "PATCH", f"/v1/estates/{site.estate_id}/pools/{site.pool_id}", site.admin, {"lease_seconds": bad}, 400
        )


async def test_expiring_purchases_are_flagged_to_the_agent(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 10, ONE)])
    lease = await site.acquire("E1", 1, status=201)
    assert lease["state"] == "expiring"
    assert lease["seats"][0]["state"] == "expiring"
