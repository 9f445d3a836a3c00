"""Webhook endpoints and their deliveries, against a real loopback receiver that checks
every delivery with the Standard Webhooks library (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from broker.clock import ManualClock
from broker.reaper import lapse_due
from broker.services import SERVICES
from broker.store.base import Tx
from broker.webhooks import events
from shared.timefmt import format_ts
from tests.broker.estate_kit import base, enroll, estate, lease
from tests.broker.webhook_kit import Receiver, add_endpoint, deliver, hook_broker, hooks_of, listening
from tests.conftest import Broker


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with listening() as found:
        yield found


@pytest.fixture
async def hooked(aiohttp_client: Any, config_factory: Any, clock: ManualClock, operator_token: str) -> Broker:
    return await hook_broker(aiohttp_client, config_factory, clock, operator_token)


ALL = [
    "purchase.expiring",
    "purchase.expired",
    "purchase.grace_ended",
    "pool.exhausted",
    "lease.lapsed",
    "server.enrolled",
    "server.removed",
    "code.redeemed",
]


async def test_an_endpoint_is_made_listed_and_deleted_and_its_secret_is_shown_once(
    hooked: Broker, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["server.enrolled", "lease.lapsed"])
    assert made["secret"].startswith("whsec_") and len(made["secret"]) > 40
    assert made["events"] == ["lease.lapsed", "server.enrolled"]
    assert made["failing"] is False
    listed = await hooked.call("GET", f"{base(est)}/webhooks", est.admin, status=200)
    assert [e["id"] for e in listed["items"]] == [made["id"]]
    assert all("secret" not in e for e in listed["items"])
    one = await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}", est.admin, status=200)
    assert "secret" not in one and one["url"] == receiver.url
    # Sealed at rest, never in clear, never logged.
    raw = made["secret"].removeprefix("whsec_")
    dump = hooked.db.dump() if not hooked.db.postgres else b""
    assert raw.encode() not in dump
    sealed = hooked.db.rows("SELECT secret_sealed FROM webhook_endpoints")
    assert raw.encode() not in bytes(sealed[0][0])
    assert raw not in caplog.text and made["secret"] not in caplog.text
    await hooked.call("DELETE", f"{base(est)}/webhooks/{made['id']}", est.admin, status=204)
    await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}", est.admin, status=404)
    actions = [e["action"] for e in (await hooked.call("GET", f"{base(est)}/events", est.admin))["items"]]
    assert "webhook.created" in actions and "webhook.deleted" in actions


async def test_endpoints_are_scoped_to_their_estate(hooked: Broker, receiver: Receiver) -> None:
    ours, theirs = await estate(hooked, "Ours"), await estate(hooked, "Theirs")
    made = await add_endpoint(hooked, ours, receiver, ["server.enrolled"])
    for method, suffix in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/test"),
        ("POST", "/rotate-secret"),
        ("GET", "/deliveries"),
    ):
        await hooked.call(method, f"{base(ours)}/webhooks/{made['id']}{suffix}", theirs.admin, status=404)
        await hooked.call(method, f"{base(theirs)}/webhooks/{made['id']}{suffix}", theirs.admin, status=404)
    assert (await hooked.call("GET", f"{base(theirs)}/webhooks", theirs.admin, status=200))["items"] == []


@pytest.mark.parametrize(
    "payload",
    [
        {"url": "https://hooks.example/x", "events": ["no.such.event"]},
        {"url": "https://hooks.example/x", "events": []},
        {"url": "ftp://hooks.example/x", "events": ["server.enrolled"]},
        {"url": "https://user:pw@hooks.example/x", "events": ["server.enrolled"]},
        {"url": "https://", "events": ["server.enrolled"]},
        {"url": "https://hooks.example/x", "events": ["server.enrolled"], "extra": 1},
        {"url": "https://hooks.\u0000example/x", "events": ["server.enrolled"]},
        {"url": "https://hooks.example/x\n", "events": ["server.enrolled"]},
        {"url": "https://hooks example/x", "events": ["server.enrolled"]},
        {"url": "https://[::1/x", "events": ["server.enrolled"]},
        {"url": "https://hooks.example:99999/x", "events": ["server.enrolled"]},
        {"url": "https://" + "a" * 2050, "events": ["server.enrolled"]},
        {"url": "https://hooks.example/x", "events": ["server.enrolled", "server.enrolled"] * 30},
    ],
)
async def test_bad_endpoints_are_validation_errors(hooked: Broker, payload: dict[str, Any]) -> None:
    est = await estate(hooked)
    body = await hooked.call("POST", f"{base(est)}/webhooks", est.admin, payload, 400)
    assert body["code"] == "validation_error"


async def test_every_delivery_is_signed_the_standard_webhooks_way(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    await hooked.purchase(est.id, quantity=1)
    await add_endpoint(hooked, est, receiver, ALL)
    await hooked.call("PATCH", f"{base(est)}/pools/{est.default_pool}", est.admin, {"lease_seconds": 60}, 200)
    server = await enroll(hooked, est, est.default_pool, name="enc-7")
    await lease(hooked, server["server_token"], "cam-1", 1)
    await lease(hooked, server["server_token"], "cam-2", 1, status=409)  # the pool ran dry
    hooked.clock.advance(61)  # the first lease lapses
    await lapse_due(hooked.client.app[SERVICES])
    await hooked.call("DELETE", f"{base(est)}/servers/{server['server_id']}", est.admin, status=204)
    await deliver(hooked)
    assert receiver.unverified == []
    types = [d.payload["type"] for d in receiver.deliveries]
    assert sorted(types) == sorted(
        ["server.enrolled", "code.redeemed", "pool.exhausted", "lease.lapsed", "server.removed"]
    )
    for d in receiver.deliveries:
        assert list(d.payload) == ["type", "id", "timestamp", "data"]
        assert d.headers["webhook-id"] == d.payload["id"]
        assert d.headers["webhook-signature"].startswith("v1,")
        assert d.headers["content-type"] == "application/json"
    enrolled = receiver.of_type("server.enrolled")[0]["data"]
    assert enrolled["server_id"] == server["server_id"] and enrolled["name"] == "enc-7"
    lapsed = receiver.of_type("lease.lapsed")[0]["data"]
    assert lapsed["encoder"] == "cam-1" and lapsed["count"] == 1
    exhausted = receiver.of_type("pool.exhausted")[0]["data"]
    assert exhausted["pool_id"] == est.default_pool and exhausted["available"] == 0 and exhausted["requested"] == 1
    # Each attempt is listed with its status code and latency.
    hook = (await hooked.call("GET", f"{base(est)}/webhooks", est.admin))["items"][0]
    listed = await hooked.call("GET", f"{base(est)}/webhooks/{hook['id']}/deliveries", est.admin, status=200)
    assert {a["status_code"] for a in listed["items"]} == {200}
    assert {a["outcome"] for a in listed["items"]} == {"delivered"}
    assert listed["deliveries"] == {"pending": 0, "delivered": 5, "failed": 0}
    assert await deliver(hooked) == 0  # nothing is sent twice


async def test_an_endpoint_gets_only_the_types_it_asked_for(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    await hooked.purchase(est.id)
    await add_endpoint(hooked, est, receiver, ["server.removed"])
    server = await enroll(hooked, est, est.default_pool)
    assert await deliver(hooked) == 0
    await hooked.call("DELETE", f"{base(est)}/servers/{server['server_id']}", est.admin, status=204)
    assert await deliver(hooked) == 1
    assert [d.payload["type"] for d in receiver.deliveries] == ["server.removed"]


async def test_a_test_event_goes_to_that_endpoint(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["server.removed"])
    sent = await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    assert [d.payload["id"] for d in receiver.deliveries] == [sent["event_id"]]
    assert receiver.deliveries[0].payload["type"] == "webhook.test"
    assert receiver.unverified == []


async def test_deliveries_survive_a_receiver_outage_and_are_retried_on_the_schedule(
    hooked: Broker, receiver: Receiver
) -> None:
    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["server.enrolled"])
    port = receiver.port
    await receiver.stop()
    await hooked.purchase(est.id)
    await enroll(hooked, est, est.default_pool)
    assert await deliver(hooked) == 1  # refused: nobody listens
    hooked.clock.advance(3)
    assert await deliver(hooked) == 0  # the next attempt is 5 s (±10 %) later
    hooked.clock.advance(3)
    assert await deliver(hooked) == 1  # still down
    receiver.port = port
    await receiver.start()
    hooked.clock.advance(67)
    assert await deliver(hooked) == 1
    assert len(receiver.deliveries) == 1 and receiver.unverified == []
    listed = await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin)
    attempts = list(reversed(listed["items"]))
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["outcome"] for a in attempts] == ["retrying", "retrying", "delivered"]
    assert attempts[0]["status_code"] is None and "connect" in attempts[0]["error"]
    assert attempts[2]["status_code"] == 200 and attempts[2]["error"] is None
    assert len({a["event_id"] for a in attempts}) == 1  # one webhook-id across retries


async def test_an_endpoint_that_keeps_failing_is_flagged_and_the_delivery_given_up(
    hooked: Broker, receiver: Receiver
) -> None:
    receiver.status = 500
    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["server.enrolled"])
    await hooked.purchase(est.id)
    await enroll(hooked, est, est.default_pool)
    for _ in range(4):  # TEST_SCHEDULE has four attempts
        assert await deliver(hooked) == 1
        hooked.clock.advance(150)
    assert await deliver(hooked) == 0
    view = await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}", est.admin)
    assert view["failing"] is True and view["failures"] == 4 and view["last_success_at"] is None
    listed = await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin)
    assert listed["items"][0]["outcome"] == "failed" and listed["items"][0]["status_code"] == 500
    assert listed["deliveries"]["failed"] == 1
    # A 2xx clears the flag.
    receiver.status = 204
    await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    view = await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}", est.admin)
    assert view["failing"] is False and view["failures"] == 0


async def test_redirects_are_not_followed(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    made = await add_endpoint(
        hooked, est, receiver, ["server.enrolled"], url=receiver.url.replace("/hook", "/redirect")
    )
    await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    assert receiver.deliveries == []  # the redirect's target was never asked
    listed = await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin)
    assert listed["items"][0]["status_code"] == 302 and listed["items"][0]["outcome"] == "retrying"
    assert "redirect" in listed["items"][0]["error"]


async def test_a_slow_receiver_times_out_and_a_long_answer_is_not_read(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["server.enrolled"])
    receiver.answer = b"x" * (1024 * 1024)
    await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    first = (await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin))["items"][0]
    assert first["outcome"] == "delivered" and "not read further" in first["error"]


async def test_a_receiver_slower_than_the_timeout_fails_the_attempt(
    aiohttp_client: Any, config_factory: Any, clock: Any, operator_token: str, receiver: Receiver
) -> None:
    b = await hook_broker(aiohttp_client, config_factory, clock, operator_token, webhook_timeout_seconds=0.5)
    est = await estate(b)
    made = await add_endpoint(b, est, receiver, ["server.enrolled"])
    receiver.delay = 2.0
    await b.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(b)
    first = (await b.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin))["items"][0]
    assert first["outcome"] == "retrying" and "within 0.5 s" in first["error"]


async def test_a_rotated_secret_signs_beside_the_old_one_for_a_day(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["server.enrolled"])
    rotated = await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/rotate-secret", est.admin, {}, 200)
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != made["secret"]
    await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    from standardwebhooks import Webhook

    d = receiver.deliveries[0]
    assert len(d.headers["webhook-signature"].split(" ")) == 2
    Webhook(made["secret"]).verify(d.body, d.headers)
    Webhook(rotated["secret"]).verify(d.body, d.headers)
    # After the overlap only the new secret signs (the clock moves a day: check by hand).
    hooked.clock.advance(86401)
    await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    later = receiver.deliveries[-1]
    assert len(later.headers["webhook-signature"].split(" ")) == 1
    from broker.webhooks.signing import signature

    raw = __import__("base64").b64decode(rotated["secret"].removeprefix("whsec_"))
    expected = signature(raw, later.headers["webhook-id"], int(later.headers["webhook-timestamp"]), later.body)
    assert later.headers["webhook-signature"] == expected


async def test_a_starving_fleet_raises_one_pool_exhausted_an_hour(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    await hooked.purchase(est.id, quantity=1)
    await add_endpoint(hooked, est, receiver, ["pool.exhausted"])
    await hooked.call("PATCH", f"{base(est)}/pools/{est.default_pool}", est.admin, {"lease_seconds": 30 * 86400}, 200)
    server = await enroll(hooked, est, est.default_pool)
    await lease(hooked, server["server_token"], "cam-0", 1)
    for i in range(5):
        await lease(hooked, server["server_token"], f"cam-{i + 1}", 1, status=409)
        hooked.clock.advance(61)  # past each process's own minute of quiet
    await deliver(hooked)
    assert len(receiver.of_type("pool.exhausted")) == 1
    hooked.clock.advance(3600)
    await lease(hooked, server["server_token"], "cam-9", 1, status=409)
    await deliver(hooked)
    # The second is sent an hour later (its timestamp too far from the real time for the
    # receiver's library to accept: that the library refused it proves it came).
    assert len(receiver.of_type("pool.exhausted")) == 2
    assert len(receiver.unverified) == 1 and "too new" in receiver.unverified[0]


async def test_deliveries_survive_a_broker_restart(
    aiohttp_client: Any, config_factory: Any, clock: Any, operator_token: str, receiver: Receiver
) -> None:
    first = await hook_broker(aiohttp_client, config_factory, clock, operator_token)
    est = await estate(first)
    made = await add_endpoint(first, est, receiver, ["server.enrolled"])
    await first.purchase(est.id)
    await enroll(first, est, est.default_pool)
    await first.client.close()  # stopped before it sent anything
    assert receiver.deliveries == []
    second = await hook_broker(aiohttp_client, config_factory, clock, operator_token)
    await deliver(second)
    assert [d.payload["type"] for d in receiver.deliveries] == ["server.enrolled"]
    assert receiver.unverified == []
    listed = await second.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin)
    assert listed["deliveries"]["delivered"] == 1


async def test_two_brokers_on_one_database_send_each_attempt_once(
    aiohttp_client: Any, config_factory: Any, clock: Any, operator_token: str, receiver: Receiver
) -> None:
    import asyncio

    one = await hook_broker(aiohttp_client, config_factory, clock, operator_token)
    two = await hook_broker(aiohttp_client, config_factory, clock, operator_token)
    est = await estate(one)
    made = await add_endpoint(one, est, receiver, ["server.enrolled"])
    now = clock.now()

    def thirty(tx: Tx) -> None:  # written without waking either broker's loop
        for i in range(30):
            events.emit(tx, now, est.id, events.TEST, {"n": i}, only=made["id"])

    await one.client.app[SERVICES].store.write(thirty)
    receiver.delay = 0.05
    sent = await asyncio.gather(deliver(one), deliver(two), deliver(one), deliver(two))
    assert sum(sent) == 30
    ids = [d.payload["id"] for d in receiver.deliveries]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert receiver.unverified == []


async def test_expiry_events_fire_once_each(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    await add_endpoint(hooked, est, receiver, ["purchase.expiring", "purchase.expired", "purchase.grace_ended"])
    soon = await hooked.purchase(est.id, sales_order="SO-SOON", expires_in_days=10)
    await hooked.purchase(est.id, sales_order="SO-GONE", expires_in_days=-1)
    await hooked.purchase(est.id, sales_order="SO-LONG-GONE", expires_in_days=-40)
    await hooked.purchase(est.id, sales_order="SO-LATER", expires_in_days=90)
    hooks = hooks_of(hooked)
    assert await hooks.scan_expiry() == 3
    assert await hooks.scan_expiry() == 0  # once
    await deliver(hooked)
    assert receiver.unverified == []
    got = {d.payload["data"]["sales_order"]: d.payload["type"] for d in receiver.deliveries}
    assert got == {
        "SO-SOON": "purchase.expiring",
        "SO-GONE": "purchase.expired",
        "SO-LONG-GONE": "purchase.grace_ended",
    }
    data = receiver.of_type("purchase.expiring")[0]["data"]
    assert data["purchase_id"] == soon["id"] and data["expires_at"] == soon["expires_at"]
    # Later stages fire as the clock reaches them (their rows are read, not sent: the
    # receiver's library refuses a timestamp so far from the real time).
    hooked.clock.advance(10 * 86400 + 1)
    assert await hooks.scan_expiry() == 1
    hooked.clock.advance(30 * 86400)
    assert await hooks.scan_expiry() == 2  # SO-SOON's grace, and SO-GONE's, have ended
    assert await hooks.scan_expiry() == 0
    types = [r[0] for r in hooked.db.rows("SELECT body FROM webhook_events")]
    soon_types = [json.loads(b)["type"] for b in types if soon["id"] in b]
    assert soon_types.count("purchase.expiring") == 1
    assert soon_types.count("purchase.expired") == 1 and soon_types.count("purchase.grace_ended") == 1
    # A new expiry date is a new date: its events fire again.
    later = hooked.clock.now() + 5 * 86400
    await hooked.call(
        "PATCH",
        f"{base(est)}/purchases/{soon['id']}",
        hooked.operator,
        {"status": "valid", "expires_at": format_ts(later)},
        200,
    )
    assert await hooks.scan_expiry() == 1


async def test_concurrent_expiry_scans_fire_once(
    aiohttp_client: Any, config_factory: Any, clock: Any, operator_token: str, receiver: Receiver
) -> None:
    import asyncio

    one = await hook_broker(aiohttp_client, config_factory, clock, operator_token)
    two = await hook_broker(aiohttp_client, config_factory, clock, operator_token)
    est = await estate(one)
    await add_endpoint(one, est, receiver, ["purchase.expiring"])
    for i in range(20):
        await one.purchase(est.id, sales_order=f"SO-{i}", expires_in_days=5)
    sent = await asyncio.gather(*(h.scan_expiry() for h in (hooks_of(one), hooks_of(two)) * 3))
    assert sum(sent) == 20
    await deliver(one)  # each scan woke its own broker's loop: wait for both
    await deliver(two)
    assert len(receiver.deliveries) == 20 and receiver.unverified == []


async def test_finished_deliveries_are_purged_after_thirty_days(hooked: Broker, receiver: Receiver) -> None:
    from functools import partial

    from broker.webhooks.delivery import purge

    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["server.enrolled"])
    await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    store = hooked.client.app[SERVICES].store
    receiver.status = 500
    await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    await deliver(hooked)  # pending: kept however old
    assert await store.write(partial(purge, now=hooked.clock.now() + 29 * 86400)) == 0
    assert await store.write(partial(purge, now=hooked.clock.now() + 31 * 86400)) == 4  # 2 attempts, 1 row, 1 event
    listed = await hooked.call("GET", f"{base(est)}/webhooks/{made['id']}/deliveries", est.admin)
    assert listed["items"] == [] and listed["deliveries"] == {"pending": 1, "delivered": 0, "failed": 0}


async def test_a_retried_create_makes_one_endpoint_and_answers_the_same_secret(
    hooked: Broker, receiver: Receiver
) -> None:
    est = await estate(hooked)
    payload = {"url": receiver.url, "events": ["lease.lapsed"]}
    headers = {"Idempotency-Key": "add-hook-1"}
    first = await hooked.call("POST", f"{base(est)}/webhooks", est.admin, payload, 201, headers)
    again = await hooked.call("POST", f"{base(est)}/webhooks", est.admin, payload, 201, headers)
    assert again == first
    listed = await hooked.call("GET", f"{base(est)}/webhooks", est.admin)
    assert [h["id"] for h in listed["items"]] == [first["id"]]
    stored = hooked.db.rows("SELECT body FROM idempotency")
    assert all(first["secret"].encode() not in bytes(r[0]) for r in stored)  # kept sealed


async def test_deliveries_are_listed_newest_first_a_page_at_a_time(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["lease.lapsed"])
    sent = []
    for _ in range(5):
        sent.append(
            (await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202))["event_id"]
        )
        await deliver(hooked)
    path = f"{base(est)}/webhooks/{made['id']}/deliveries"
    first = await hooked.call("GET", f"{path}?limit=2", est.admin, status=200)
    second = await hooked.call("GET", f"{path}?limit=2&before={first['next']}", est.admin, status=200)
    third = await hooked.call("GET", f"{path}?limit=2&before={second['next']}", est.admin, status=200)
    seen = [a["event_id"] for page in (first, second, third) for a in page["items"]]
    assert seen == list(reversed(sent)) and third["next"] is None
    await hooked.call("GET", f"{path}?before=x", est.admin, status=400)


async def test_metrics_show_deliveries_waiting_given_up_and_failing_endpoints(
    hooked: Broker, receiver: Receiver
) -> None:
    async def gauges() -> dict[str, float]:
        resp = await hooked.client.get("/metrics", headers=hooked.auth(hooked.operator))
        text = await resp.text()
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line.startswith("tenure_webhook_")
        }

    receiver.status = 503
    est = await estate(hooked)
    made = await add_endpoint(hooked, est, receiver, ["lease.lapsed"])
    for _ in range(2):
        await hooked.call("POST", f"{base(est)}/webhooks/{made['id']}/test", est.admin, {}, 202)
    assert await gauges() == {
        "tenure_webhook_deliveries_pending": 2,
        "tenure_webhook_deliveries_failed": 0,
        "tenure_webhook_endpoints_failing": 0,
    }
    for _ in range(4):
        await deliver(hooked)
        hooked.clock.advance(150)
    assert await gauges() == {
        "tenure_webhook_deliveries_pending": 0,
        "tenure_webhook_deliveries_failed": 2,
        "tenure_webhook_endpoints_failing": 1,
    }
