"""The pool page's licence policies: soft-lock windows (with the reference product's
preset), the seats they hold and for whom, the override on force-release, and each
server's limits and reservations, checked inline before anything is sent."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import Console, LiveBroker

pytestmark = pytest.mark.browser
ONE = "one-in-one-out"


def _enrol(broker: LiveBroker, eid: str, admin: str, pool_id: str, name: str) -> dict[str, Any]:
    code = broker.ok("POST", f"/v1/estates/{eid}/pools/{pool_id}/auth-codes", admin, {}, 201)
    body: dict[str, Any] = broker.ok(
        "POST", "/v1/enroll", None, {"code": code["code"], "name": name, "kind": "server"}, 201
    )
    return body


def _site(broker: LiveBroker, name: str, seats: int) -> tuple[str, str, dict[str, Any]]:
    est = broker.estate(name)
    eid, admin = est["id"], est["admin_token"]
    so = broker.purchase(eid, "SO-7001", seats, ONE)
    pool = broker.ok(
        "POST",
        f"/v1/estates/{eid}/pools",
        admin,
        {"name": "Bergen", "moves": [{"purchase_id": so["id"], "count": seats}]},
        201,
    )
    return eid, admin, pool


def _patches(page: Any) -> list[str]:
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.method in ("PATCH", "DELETE") else None)
    return sent


def test_soft_lock_preset_held_seats_and_the_override(console: Console) -> None:
    broker, page = console.broker, console.page
    eid, admin, pool = _site(broker, "Vest Media", 2)
    host = _enrol(broker, eid, admin, pool["id"], "host-bergen")
    for encoder in ("ENC-1", "ENC-2"):
        broker.ok(
            "POST", "/v1/leases", host["server_token"], {"encoder": encoder, "licence_type": ONE, "count": 1}, 201
        )

    console.sign_in(admin)
    page.goto(f"{broker.url}/console/#/pools/{pool['id']}")
    expect(page.get_by_role("heading", level=1, name="Bergen")).to_be_focused()
    soft = page.get_by_role("region", name="Soft-lock")
    sent = _patches(page)

    # Inline validation: nothing is sent.
    soft.get_by_role("spinbutton", name="Hardware encoders, in seconds").fill("99999999")
    soft.get_by_role("button", name="Save soft-lock windows").click()
    expect(soft.get_by_role("alert")).to_have_text("The hardware window must be a whole number from 0 to 7776000.")
    expect(soft.get_by_role("spinbutton", name="Hardware encoders, in seconds")).to_be_focused()
    assert sent == []

    soft.get_by_role("button", name="45 days for hardware, 30 minutes for containers").click()
    expect(page.get_by_role("status")).to_have_text(
        "Soft-lock windows set: 45 d for hardware encoders, 30 min for containers."
    )
    soft = page.get_by_role("region", name="Soft-lock")
    expect(soft.get_by_role("spinbutton", name="Hardware encoders, in seconds")).to_have_value("3888000")
    expect(soft.get_by_role("spinbutton", name="Containers, in seconds")).to_have_value("1800")
    leases = page.get_by_role("region", name="Leases")
    expect(leases.get_by_role("row", name=re.compile("ENC-1"))).to_contain_text("Newly added until")

    # A force-release holds the seats for the encoder ...
    leases.get_by_role("button", name="Force-release ENC-1", exact=True).click()
    page.get_by_role("dialog", name="Force-release ENC-1?").get_by_role("button", name="Yes, release").click()
    expect(page.get_by_role("status")).to_contain_text("ENC-1's licences released; they stay held for it until")
    held = page.get_by_role("region", name="Soft-lock").get_by_role("table", name="Seats held for encoders")
    expect(held.get_by_role("row", name=re.compile("ENC-1"))).to_contain_text("Hardware")
    lead = page.get_by_role("paragraph").filter(has_text="allocated")
    expect(lead.first).to_contain_text("1 soft-locked")
    page.get_by_role("region", name="Soft-lock").scroll_into_view_if_needed()
    console.shot("19-soft-lock", docs=True)

    # ... unless the admin overrides it.
    leases = page.get_by_role("region", name="Leases")
    leases.get_by_role("button", name="Force-release ENC-2 and free its seats now").click()
    dialog = page.get_by_role("dialog", name="Force-release ENC-2 and free its seats now?")
    dialog.get_by_role("button", name="Yes, release and free").click()
    expect(page.get_by_role("status")).to_have_text("ENC-2's licences released and free now.")
    assert any("override_soft_lock=true" in url for url in sent)

    soft = page.get_by_role("region", name="Soft-lock")
    soft.get_by_role("button", name="Free the seats held for ENC-1").click()
    page.get_by_role("dialog", name="Free the seats held for ENC-1?").get_by_role(
        "button", name="Yes, free them"
    ).click()
    expect(page.get_by_role("status")).to_have_text("The seats held for ENC-1 are free.")
    expect(page.get_by_role("region", name="Soft-lock")).to_contain_text("No seats are held for encoders.")
    view = broker.ok("GET", f"/v1/estates/{eid}/pools/{pool['id']}", admin)
    assert (view["available"], view["soft_locked"]) == (2, 0)

    # Removing a server with the override frees its encoders' seats at once.
    broker.ok("POST", "/v1/leases", host["server_token"], {"encoder": "ENC-3", "licence_type": ONE, "count": 2}, 201)
    page.reload()
    servers = page.get_by_role("region", name="Servers and domains")
    servers.get_by_role("button", name="Remove host-bergen and free its seats now").click()
    dialog = page.get_by_role("dialog", name="Remove server host-bergen and free its seats now?")
    dialog.get_by_role("button", name="Yes, remove and free").click()
    expect(page.get_by_role("status")).to_have_text("host-bergen removed; its licences are free now.")
    view = broker.ok("GET", f"/v1/estates/{eid}/pools/{pool['id']}", admin)
    assert (view["available"], view["soft_locked"]) == (2, 0)
    events = broker.ok("GET", f"/v1/estates/{eid}/events?action=server.removed", admin)["items"]
    assert events[-1]["details"]["override_soft_lock"] is True
    console.assert_clean()


def test_server_limits_and_reservations_are_checked_inline_then_saved(console: Console) -> None:
    broker, page = console.broker, console.page
    eid, admin, pool = _site(broker, "Nord Media", 2)
    host = _enrol(broker, eid, admin, pool["id"], "host-a")
    _enrol(broker, eid, admin, pool["id"], "host-b")
    broker.ok("PATCH", f"/v1/estates/{eid}/servers/{host['server_id']}", admin, {"limits": {ONE: {"reserved": 1}}}, 200)

    console.sign_in(admin)
    page.goto(f"{broker.url}/console/#/pools/{pool['id']}")
    expect(page.get_by_role("heading", level=1, name="Bergen")).to_be_focused()
    limits = page.get_by_role("region", name="Limits and reservations")
    sent = _patches(page)

    reserved_b = limits.get_by_role("spinbutton", name=f"Reserved {ONE} for host-b")
    reserved_b.fill("2")
    limits.get_by_role("button", name="Save limits of host-b").click()
    expect(limits.get_by_role("alert")).to_have_text(f"Reservations of {ONE} would come to 3, but the pool holds 2.")
    expect(reserved_b).to_be_focused()
    expect(reserved_b).to_have_attribute("aria-invalid", "true")

    limits.get_by_role("spinbutton", name=f"Max {ONE} for host-b").fill("0")
    reserved_b.fill("1")
    limits.get_by_role("button", name="Save limits of host-b").click()
    expect(limits.get_by_role("alert")).to_have_text(f"Reserved {ONE} (1) cannot be more than its max (0).")
    assert sent == []

    limits.get_by_role("spinbutton", name=f"Max {ONE} for host-b").fill("2")
    limits.get_by_role("button", name="Save limits of host-b").click()
    expect(page.get_by_role("status")).to_have_text("Limits of host-b saved.")
    servers = page.get_by_role("region", name="Servers and domains")
    expect(servers.get_by_role("row", name=re.compile("host-b"))).to_contain_text(f"{ONE}: max 2, 1 reserved")
    expect(servers.get_by_role("row", name=re.compile("host-a"))).to_contain_text(f"{ONE}: 1 reserved")
    listed = broker.ok("GET", f"/v1/estates/{eid}/servers", admin)["items"]
    assert {s["name"]: s["limits"] for s in listed} == {
        "host-a": {ONE: {"max": None, "reserved": 1}},
        "host-b": {ONE: {"max": 2, "reserved": 1}},
    }
    console.assert_clean()
