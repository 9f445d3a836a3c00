"""The console's webhooks page: add an endpoint with its event types, see its secret once,
send a test event and see the delivery, and see an endpoint that keeps failing flagged.
A real broker (webhook_allow_private on) delivers to a receiver on loopback that checks
each delivery with the Standard Webhooks library."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from broker.ids import new_token
from tests.broker.webhook_kit import ThreadReceiver
from tests.console.conftest import Console, LiveBroker, free_port, open_console, running_broker

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def receiver() -> Iterator[ThreadReceiver]:
    with ThreadReceiver.serving() as server:
        yield server


@pytest.fixture(scope="module")
def hook_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    env = {"TENURE_WEBHOOK_ALLOW_PRIVATE": "true", "TENURE_WEBHOOK_POLL_SECONDS": "0.1"}
    with running_broker(tmp_path_factory.mktemp("webhooks-broker"), new_token("op"), free_port(), env) as broker:
        yield broker


@pytest.fixture
def hook_console(browser: Any, hook_broker: LiveBroker) -> Iterator[Console]:
    with open_console(browser, hook_broker) as opened:
        yield opened


def test_add_an_endpoint_see_its_secret_once_and_its_test_delivery(
    hook_console: Console, receiver: ThreadReceiver
) -> None:
    broker, page = hook_console.broker, hook_console.page
    est = broker.estate("Harbour Vision")
    hook_console.sign_in(est["admin_token"])
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", level=1, name="Webhooks")).to_be_focused()
    expect(page.get_by_text("No webhook endpoints yet.")).to_be_visible()

    add = page.get_by_role("region", name="Add endpoint")
    add.get_by_role("textbox", name="Endpoint URL").fill(receiver.url)
    add.get_by_role("checkbox", name="server.enrolled").check()
    add.get_by_role("checkbox", name="pool.exhausted").check()
    add.get_by_role("button", name="Add endpoint").click()
    secret_field = page.get_by_role("textbox", name="Signing secret")
    expect(secret_field).to_have_value(re.compile("^whsec_[A-Za-z0-9+/]{43}=$"))
    secret = secret_field.input_value()
    receiver.secrets.append(secret)
    endpoints = page.get_by_role("region", name="Endpoints")
    expect(endpoints.get_by_role("link", name=receiver.url)).to_be_visible()
    expect(endpoints.get_by_text("pool.exhausted, server.enrolled")).to_be_visible()

    # Shown once: drawn again, the page no longer holds it.
    page.reload()
    expect(page.get_by_role("heading", level=1, name="Webhooks")).to_be_visible()
    expect(page.get_by_role("textbox", name="Signing secret")).to_have_count(0)
    assert secret not in page.content()

    page.get_by_role("link", name=receiver.url).click()
    expect(page.get_by_role("heading", level=1, name="Webhook endpoint")).to_be_focused()
    expect(page.get_by_text("Nothing has been sent to this endpoint yet.")).to_be_visible()
    page.get_by_role("button", name="Send test event").click()
    attempts = page.get_by_role("table", name="Delivery attempts")
    expect(attempts.get_by_role("row").filter(has_text="webhook.test")).to_contain_text("delivered")
    expect(attempts).to_contain_text("204")
    assert [d["type"] for d in receiver.verified] == ["webhook.test"] and receiver.unverified == []
    hook_console.shot("18-webhook-endpoint", docs=True)
    hook_console.assert_clean()


def test_an_endpoint_that_keeps_failing_is_flagged(hook_console: Console) -> None:
    broker, page = hook_console.broker, hook_console.page
    est = broker.estate("Dead Letter Ltd")
    eid, admin = est["id"], est["admin_token"]
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    made = broker.ok("POST", f"/v1/estates/{eid}/webhooks", admin, {"url": dead, "events": ["lease.lapsed"]}, 201)
    for _ in range(3):
        broker.ok("POST", f"/v1/estates/{eid}/webhooks/{made['id']}/test", admin, {}, 202)
    hook_console.sign_in(admin)
    expect(page.get_by_role("heading", level=1, name="Dead Letter Ltd")).to_be_visible()
    deadline_ok = False
    for _ in range(50):
        if broker.ok("GET", f"/v1/estates/{eid}/webhooks/{made['id']}", admin)["failing"]:
            deadline_ok = True
            break
        page.wait_for_timeout(100)
    assert deadline_ok, "three failed attempts did not flag the endpoint"
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("alert")).to_contain_text(f"1 endpoint keeps failing: {dead}")
    expect(page.get_by_role("region", name="Endpoints")).to_contain_text("Failing (3 failed attempts)")
    page.get_by_role("link", name=dead).click()
    attempts = page.get_by_role("table", name="Delivery attempts")
    expect(attempts.get_by_role("row").filter(has_text="cannot connect")).to_have_count(3)
    hook_console.assert_clean()


def test_rotate_the_secret_then_delete_the_endpoint(hook_console: Console, receiver: ThreadReceiver) -> None:
    broker, page = hook_console.broker, hook_console.page
    est = broker.estate("Turnstone Media")
    eid, admin = est["id"], est["admin_token"]
    made = broker.ok(
        "POST", f"/v1/estates/{eid}/webhooks", admin, {"url": receiver.url, "events": ["lease.lapsed"]}, 201
    )
    hook_console.sign_in(admin)
    page.goto(f"{broker.url}/console/#/webhooks/{made['id']}")
    expect(page.get_by_role("heading", level=1, name="Webhook endpoint")).to_be_visible()

    page.get_by_role("button", name="Rotate secret").click()
    page.get_by_role("dialog", name="Rotate the signing secret?").get_by_role("button", name="Yes, rotate").click()
    secret_field = page.get_by_role("textbox", name="Signing secret")
    expect(secret_field).to_have_value(re.compile("^whsec_"))
    rotated = secret_field.input_value()
    assert rotated != made["secret"]
    receiver.secrets.append(rotated)
    page.get_by_role("button", name="Send test event").click()
    expect(page.get_by_role("table", name="Delivery attempts")).to_contain_text("delivered")
    assert any(p["data"].get("endpoint_id") == made["id"] for p in receiver.verified)  # the new secret verifies it

    page.get_by_role("button", name="Delete endpoint").click()
    page.get_by_role("dialog", name="Delete this endpoint?").get_by_role("button", name="Yes, delete").click()
    expect(page.get_by_role("heading", level=1, name="Webhooks")).to_be_visible()
    expect(page.get_by_text("No webhook endpoints yet.")).to_be_visible()
    assert broker.call("GET", f"/v1/estates/{eid}/webhooks/{made['id']}", admin)[0] == 404
    hook_console.assert_clean()
