"""The seed's whole flow in a real browser against a real broker, found as a screen reader would."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.console.conftest import Console

pytestmark = pytest.mark.browser

CODE = re.compile(r"^\d{4} \d{4}$")


def test_seed_flow(console: Console) -> None:
    broker, page = console.broker, console.page
    est = broker.estate("Acme Broadcast")
    eid, admin = est["id"], est["admin_token"]
    so1 = broker.purchase(eid, "SO-1001", 10, "one-in-one-out")
    so2 = broker.purchase(eid, "SO-1002", 8, "four-in-one-out")
    broker.purchase(eid, "SO-1003", 2, "one-in-one-out", days=10)  # expiring: amber
    held = broker.purchase(eid, "SO-0999", 1, "one-in-one-out", days=200)
    broker.ok("PATCH", f"/v1/estates/{eid}/purchases/{held['id']}", broker.operator, {"status": "on_hold"})

    # Sign in: the estate home lists the licences with their states.
    console.sign_in(admin)
    expect(page.get_by_role("heading", level=1, name="Acme Broadcast")).to_be_focused()
    licences = page.get_by_role("region", name="Licences")
    expect(licences.get_by_role("row", name=re.compile("SO-1003"))).to_contain_text("Expiring")
    expect(licences.get_by_role("row", name=re.compile("SO-0999"))).to_contain_text(
        re.compile(r"On hold — grace ends \d{4}-\d{2}-\d{2}")
    )
    expect(page.locator(".badge-warn")).to_have_count(1)
    expect(page.locator(".badge-bad")).to_have_count(1)
    expect(page.get_by_role("region", name="Admins")).to_contain_text("Alice")
    console.shot("01-estate-home", docs=True)

    # See all pools: the Default Pool holds everything.
    page.get_by_role("link", name="See all pools").click()
    default_link = page.get_by_role("link", name=re.compile(r"^Default Pool"))
    expect(default_link).to_have_accessible_name("Default Pool 21 allocated / 0 in use / 20 available")
    console.shot("02-pools", docs=True)

    # Add pool, moving licences from two sales orders in one step.
    page.get_by_role("link", name="Add pool").click()
    expect(page.get_by_role("heading", level=1, name="Add pool")).to_be_focused()
    page.get_by_role("textbox", name="Pool name").fill("Paris studio")
    page.get_by_role("spinbutton", name=re.compile("SO-1001")).fill("4")
    page.get_by_role("spinbutton", name=re.compile("SO-1002")).fill("3")
    console.shot("03-add-pool", docs=True)
    page.get_by_role("button", name="Create pool").click()
    expect(page.get_by_role("heading", level=1, name="Paris studio")).to_be_focused()
    expect(page.get_by_role("status")).to_have_text("Pool Paris studio created.")
    expect(page.locator(".lead").first).to_contain_text("7 allocated / 0 in use / 7 available")

    # Both pools' counts changed.
    page.get_by_role("link", name="See all pools").click()
    expect(page.get_by_role("link", name=re.compile(r"^Default Pool"))).to_have_accessible_name(
        "Default Pool 14 allocated / 0 in use / 13 available"
    )
    paris = page.get_by_role("link", name=re.compile(r"^Paris studio"))
    expect(paris).to_have_accessible_name("Paris studio 7 allocated / 0 in use / 7 available")
    expect(page.get_by_role("listitem").filter(has=paris)).to_contain_text(
        "four-in-one-out 3 allocated / 0 in use / 3 available"
    )

    # Moving more than is unused: explained inline, nothing changes.
    paris.click()
    move = page.get_by_role("region", name="Move licences")
    move.get_by_role("spinbutton", name=re.compile("SO-1001")).fill("99")
    move.get_by_role("button", name="Move licences").click()
    alert = move.get_by_role("alert")
    expect(alert).to_have_text(
        "Sales order SO-1001 has only 6 unused licences to move; 99 were asked for. Nothing was moved."
    )
    expect(move.get_by_role("spinbutton", name=re.compile("SO-1001"))).to_be_focused()
    console.shot("04-move-refused")
    pools = broker.ok("GET", f"/v1/estates/{eid}/pools", admin)["items"]
    assert {p["name"]: p["allocated"] for p in pools} == {"Default Pool": 14, "Paris studio": 7}

    # A move that fits goes through.
    move.get_by_role("spinbutton", name=re.compile("SO-1001")).fill("2")
    move.get_by_role("button", name="Move licences").click()
    expect(page.get_by_role("status")).to_have_text("2 licences moved.")
    expect(page.locator(".lead").first).to_contain_text("9 allocated / 0 in use / 9 available")

    # Authenticate a server: the code is shown large, with the exact command.
    page.get_by_role("button", name="Authenticate server/domain").click()
    expect(page.get_by_role("heading", level=1, name="Authenticate server/domain")).to_be_focused()
    code_node = page.locator("#auth-code")
    expect(code_node).to_have_text(CODE)
    code = code_node.inner_text()
    expect(page.locator("pre.command")).to_have_text(f"tenure-agent enroll {code} --broker {broker.url}")
    expect(
        page.get_by_role("region", name="Live codes").get_by_role("button", name=re.compile("^Revoke"))
    ).to_have_count(1)
    console.shot("05-auth-code", docs=True)

    enrolled = broker.ok("POST", "/v1/enroll", None, {"code": code, "name": "enc-host-1", "kind": "server"}, 201)
    assert enrolled["pool_name"] == "Paris studio"
    lease = broker.ok(
        "POST",
        "/v1/leases",
        enrolled["server_token"],
        {"encoder": "ENC-0001", "licence_type": "one-in-one-out", "count": 3},
        201,
    )

    # The server appears with its last check-in, the encoder's lease with its count.
    page.get_by_role("link", name="Paris studio").click()
    servers = page.get_by_role("region", name="Servers and domains")
    row = servers.get_by_role("row", name=re.compile("enc-host-1"))
    expect(row).to_contain_text("Server")
    expect(row).to_contain_text(re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC"))
    expect(row.get_by_role("cell").nth(2)).to_have_text("3")
    leases = page.get_by_role("region", name="Leases")
    expect(leases.get_by_role("row", name=re.compile("ENC-0001"))).to_contain_text("one-in-one-out")
    expect(page.locator(".lead").first).to_contain_text("9 allocated / 3 in use / 6 available")
    expect(page.get_by_role("region", name="Delete pool")).to_contain_text(
        "cannot be deleted while it has 1 server and 1 lease"
    )
    console.shot("06-pool-with-server", docs=True)

    # Force-release the lease from the console (confirmed in a dialog).
    leases.get_by_role("button", name="Force-release ENC-0001").click()
    dialog = page.get_by_role("dialog", name="Force-release ENC-0001?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Yes, release").click()
    expect(page.get_by_role("status")).to_have_text("ENC-0001's licences released.")
    expect(leases).to_contain_text("No encoder holds licences from this pool.")
    expect(page.locator(".lead").first).to_contain_text("9 allocated / 0 in use / 9 available")
    status, gone = broker.call("POST", f"/v1/leases/{lease['id']}/renew", enrolled["server_token"])
    assert (status, gone["code"], gone["reason"]) == (410, "lease_gone", "revoked")

    # The audit log shows it, filtered by pool and kind.
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", level=1, name="Audit log")).to_be_focused()
    expect(page.get_by_role("link", name="Audit log")).to_have_attribute("aria-current", "page")
    page.get_by_role("combobox", name="Pool", exact=True).select_option(label="Paris studio")
    page.get_by_role("combobox", name="Kind of event").select_option(label="Lease force-released")
    page.get_by_role("button", name="Show events").click()
    expect(page.get_by_role("row", name=re.compile("UTC"))).to_have_count(1)
    expect(page.get_by_role("table")).to_contain_text("ENC-0001: 3 × one-in-one-out (force-released by an admin)")
    console.shot("07-audit-log", docs=True)

    # Sign out: the session is gone on the broker, not just in the page.
    cookie = next(c for c in page.context.cookies() if c["name"] == "tenure_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1, name="Sign in to the Tenure console")).to_be_visible()
    expect(page.get_by_text("You have signed out.")).to_be_visible()
    status, problem = broker.call(
        "GET", f"/v1/estates/{eid}/pools", headers={"Cookie": f"tenure_session={cookie['value']}"}
    )
    assert (status, problem["code"]) == (401, "unauthenticated")
    console.shot("08-signed-out")
    console.assert_clean()
    assert so1["id"] and so2["id"]


def test_pool_admin_tasks(console: Console) -> None:
    """Rename, lease lifetime, server move and removal, code revocation, pool deletion, admins."""
    broker, page = console.broker, console.page
    est = broker.estate("Globex")
    eid, admin = est["id"], est["admin_token"]
    so = broker.purchase(eid, "SO-2001", 6, "one-in-one-out")
    pool = broker.ok(
        "POST",
        f"/v1/estates/{eid}/pools",
        admin,
        {"name": "Lyon", "moves": [{"purchase_id": so["id"], "count": 2}]},
        201,
    )
    broker.ok("POST", f"/v1/estates/{eid}/pools", admin, {"name": "Nice"}, 201)
    code = broker.ok("POST", f"/v1/estates/{eid}/pools/{pool['id']}/auth-codes", admin, {}, 201)
    broker.ok("POST", "/v1/enroll", None, {"code": code["code"], "name": "host-a", "kind": "server"}, 201)
    code = broker.ok("POST", f"/v1/estates/{eid}/pools/{pool['id']}/auth-codes", admin, {}, 201)
    broker.ok("POST", "/v1/enroll", None, {"code": code["code"], "name": "host-b", "kind": "domain"}, 201)

    console.sign_in(admin)
    expect(page.get_by_role("heading", level=1, name="Globex")).to_be_focused()

    # The primary admin invites an admin (token shown once) and removes them.
    admins = page.get_by_role("region", name="Admins")
    admins.get_by_role("textbox", name="New admin's name").fill("Bob")
    admins.get_by_role("button", name="Invite admin").click()
    token = admins.get_by_role("textbox", name="Admin token for Bob")
    expect(token).to_have_value(re.compile(r"^tnr_adm_"))
    assert broker.ok("GET", "/v1/me", token.input_value())["name"] == "Bob"
    admins.get_by_role("button", name="Remove admin Bob").click()
    page.get_by_role("dialog").get_by_role("button", name="Yes, remove").click()
    expect(page.get_by_role("status")).to_have_text("Admin Bob removed.")
    assert broker.call("GET", "/v1/me", token.input_value())[0] == 401

    # Rename the pool and set its lease lifetime.
    page.goto(f"{broker.url}/console/#/pools/{pool['id']}")
    expect(page.get_by_role("heading", level=1, name="Lyon")).to_be_focused()
    settings = page.get_by_role("region", name="Settings")
    settings.get_by_role("textbox", name="Name").fill("Lyon east")
    settings.get_by_role("button", name="Rename pool").click()
    expect(page.get_by_role("heading", level=1, name="Lyon east")).to_be_focused()
    settings.get_by_role("spinbutton", name="Lease lifetime in seconds").fill("30")
    settings.get_by_role("button", name="Save lease lifetime").click()
    expect(settings.get_by_role("alert")).to_contain_text("lease_seconds")
    settings.get_by_role("spinbutton", name="Lease lifetime in seconds").fill("7200")
    settings.get_by_role("button", name="Save lease lifetime").click()
    expect(page.get_by_role("status")).to_have_text("Lease lifetime set to 2 h; new and renewed leases use it.")
    assert broker.ok("GET", f"/v1/estates/{eid}/pools/{pool['id']}", admin)["lease_seconds"] == 7200

    # Move one server to another pool; remove the other after confirming.
    servers = page.get_by_role("region", name="Servers and domains")
    servers.get_by_role("combobox", name="Pool for host-a").select_option(label="Nice")
    servers.get_by_role("button", name="Move host-a to the chosen pool").click()
    expect(page.get_by_role("status")).to_have_text("host-a now takes its licences from Nice.")
    expect(servers.get_by_role("row", name=re.compile("host-a"))).to_have_count(0)
    servers.get_by_role("button", name="Remove host-b").click()
    dialog = page.get_by_role("dialog", name="Remove domain host-b?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(servers.get_by_role("row", name=re.compile("host-b"))).to_have_count(1)
    servers.get_by_role("button", name="Remove host-b").click()
    page.get_by_role("dialog").get_by_role("button", name="Yes, remove").click()
    expect(servers).to_contain_text("No server or domain is authenticated with this pool yet.")

    # Make a code, then revoke it from the live codes list.
    page.get_by_role("button", name="Authenticate server/domain").click()
    live = page.get_by_role("region", name="Live codes")
    expect(live.get_by_role("button", name=re.compile("^Revoke"))).to_have_count(1)
    digits = page.locator("#auth-code").inner_text().replace(" ", "")
    live.get_by_role("button", name=re.compile("^Revoke")).click()
    page.get_by_role("dialog").get_by_role("button", name="Yes, revoke").click()
    expect(page.get_by_role("status")).to_have_text("Code revoked.")
    expect(live).to_contain_text("No live codes for this pool.")
    status, problem = broker.call("POST", "/v1/enroll", None, {"code": digits, "name": "late", "kind": "server"})
    assert (status, problem["code"]) == (403, "auth_code_invalid")

    # Delete the (now empty) pool: its licences go back to the Default Pool.
    page.get_by_role("link", name="Lyon east").click()
    page.get_by_role("region", name="Delete pool").get_by_role("button", name="Delete pool").click()
    page.get_by_role("dialog").get_by_role("button", name="Yes, delete").click()
    expect(page.get_by_role("heading", level=1, name="Pools")).to_be_focused()
    expect(page.get_by_role("status")).to_contain_text("Pool Lyon east deleted")
    expect(page.get_by_role("link", name=re.compile("^Default Pool"))).to_contain_text("6 allocated")

    # The audit log pages: 50 events at a time, then "Show more events".
    for i in range(40):
        broker.ok("POST", f"/v1/estates/{eid}/pools", admin, {"name": f"Pool {i:02}"}, 201)
    total = len(broker.ok("GET", f"/v1/estates/{eid}/events?limit=500", admin)["items"])
    assert 50 < total <= 100
    page.get_by_role("link", name="Audit log").click()
    rows = page.get_by_role("table").get_by_role("row")
    expect(rows).to_have_count(1 + 50)
    page.get_by_role("button", name="Show more events").click()
    expect(rows).to_have_count(1 + total)
    expect(rows.nth(51).get_by_role("rowheader")).to_be_focused()
    expect(page.get_by_role("button", name="Show more events")).to_be_hidden()
    console.assert_clean()
