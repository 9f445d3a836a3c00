"""The console's destructive actions, which share one confirm-then-call helper (js/actions.js).

Revoke code, force-release lease, remove server or domain, delete pool and remove admin:
a dismissed dialog sends nothing and changes nothing; a call the broker refuses is shown
to the admin as text, in the section the action belongs to. The code just made is handed
from the pool page to the codes page, and shown there once.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import Console, LiveBroker

pytestmark = pytest.mark.browser


def _record_deletes(page: Any) -> list[str]:
    """The URLs of every DELETE the page sends from now on."""
    deletes: list[str] = []
    page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    return deletes


def _enrol(broker: LiveBroker, eid: str, admin: str, pool_id: str, name: str) -> str:
    code = broker.ok("POST", f"/v1/estates/{eid}/pools/{pool_id}/auth-codes", admin, {}, 201)
    enrolled = broker.ok("POST", "/v1/enroll", None, {"code": code["code"], "name": name, "kind": "server"}, 201)
    token: str = enrolled["server_token"]
    return token


def test_a_dismissed_confirm_sends_nothing_and_changes_nothing(console: Console) -> None:
    broker, page = console.broker, console.page
    est = broker.estate("Fjord Media")
    eid, admin = est["id"], est["admin_token"]
    so = broker.purchase(eid, "SO-3001", 4, "one-in-one-out")
    pool = broker.ok(
        "POST",
        f"/v1/estates/{eid}/pools",
        admin,
        {"name": "Oslo", "moves": [{"purchase_id": so["id"], "count": 3}]},
        201,
    )
    server = _enrol(broker, eid, admin, pool["id"], "host-oslo")
    lease = broker.ok(
        "POST", "/v1/leases", server, {"encoder": "ENC-9", "licence_type": "one-in-one-out", "count": 1}, 201
    )
    broker.ok("POST", f"/v1/estates/{eid}/pools/{pool['id']}/auth-codes", admin, {}, 201)
    bob = broker.ok("POST", f"/v1/estates/{eid}/admins", admin, {"name": "Bob"}, 201)["token"]

    console.sign_in(admin)
    expect(page.get_by_role("heading", level=1, name="Fjord Media")).to_be_focused()
    deletes = _record_deletes(page)

    # Remove admin: Cancel.
    admins = page.get_by_role("region", name="Admins")
    admins.get_by_role("button", name="Remove admin Bob").click()
    dialog = page.get_by_role("dialog", name="Remove admin Bob?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    expect(admins.get_by_role("button", name="Remove admin Bob")).to_be_visible()

    # Force-release: Escape dismisses the dialog too.
    page.goto(f"{broker.url}/console/#/pools/{pool['id']}")
    expect(page.get_by_role("heading", level=1, name="Oslo")).to_be_focused()
    leases = page.get_by_role("region", name="Leases")
    leases.get_by_role("button", name="Force-release ENC-9").click()
    dialog = page.get_by_role("dialog", name="Force-release ENC-9?")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(leases.get_by_role("row", name=re.compile("ENC-9"))).to_have_count(1)

    # Remove server: Cancel.
    servers = page.get_by_role("region", name="Servers and domains")
    servers.get_by_role("button", name="Remove host-oslo").click()
    page.get_by_role("dialog", name="Remove server host-oslo?").get_by_role("button", name="Cancel").click()
    expect(servers.get_by_role("row", name=re.compile("host-oslo"))).to_have_count(1)

    # Revoke code: Cancel.
    page.get_by_role("link", name="Live codes").click()
    live = page.get_by_role("region", name="Live codes")
    live.get_by_role("button", name=re.compile("^Revoke")).click()
    page.get_by_role("dialog", name="Revoke this code?").get_by_role("button", name="Cancel").click()
    expect(live.get_by_role("button", name=re.compile("^Revoke"))).to_have_count(1)

    # Nothing was sent, nothing was shown as an error, and the broker agrees nothing changed.
    assert deletes == []
    expect(page.get_by_role("alert")).to_have_count(0)
    expect(page.locator("#flash")).to_be_empty()  # an empty live region has no role to find
    assert broker.ok("GET", "/v1/me", bob)["name"] == "Bob"
    assert broker.call("POST", f"/v1/leases/{lease['id']}/renew", server)[0] == 200
    assert broker.ok("GET", f"/v1/estates/{eid}/servers?pool={pool['id']}", admin)["items"][0]["name"] == "host-oslo"
    assert len(broker.ok("GET", f"/v1/estates/{eid}/auth-codes?pool={pool['id']}", admin)["items"]) == 1
    console.assert_clean()


def test_a_refused_action_shows_the_brokers_answer_as_text(console: Console) -> None:
    broker, page = console.broker, console.page
    est = broker.estate("Nordlys")
    eid, admin = est["id"], est["admin_token"]
    so = broker.purchase(eid, "SO-4001", 5, "one-in-one-out")
    bergen = broker.ok(
        "POST",
        f"/v1/estates/{eid}/pools",
        admin,
        {"name": "Bergen", "moves": [{"purchase_id": so["id"], "count": 2}]},
        201,
    )
    tromso = broker.ok(
        "POST",
        f"/v1/estates/{eid}/pools",
        admin,
        {"name": "Tromsø", "moves": [{"purchase_id": so["id"], "count": 1}]},
        201,
    )
    _enrol(broker, eid, admin, tromso["id"], "host-north")
    carol = broker.ok("POST", f"/v1/estates/{eid}/admins", admin, {"name": "Carol"}, 201)

    console.sign_in(admin)
    expect(page.get_by_role("heading", level=1, name="Nordlys")).to_be_focused()

    # Remove admin: someone else removed Carol first; the page says so and keeps its list.
    broker.ok("DELETE", f"/v1/estates/{eid}/admins/{carol['id']}", admin, status=204)
    admins = page.get_by_role("region", name="Admins")
    admins.get_by_role("button", name="Remove admin Carol").click()
    page.get_by_role("dialog", name="Remove admin Carol?").get_by_role("button", name="Yes, remove").click()
    expect(admins.get_by_role("alert")).to_have_text("No such admin in this estate.")
    expect(page.locator("#flash")).to_be_empty()

    # Delete pool: a server enrolled into Bergen after the page was drawn; the broker refuses.
    page.goto(f"{broker.url}/console/#/pools/{bergen['id']}")
    expect(page.get_by_role("heading", level=1, name="Bergen")).to_be_focused()
    _enrol(broker, eid, admin, bergen["id"], "host-late")
    delete = page.get_by_role("region", name="Delete pool")
    delete.get_by_role("button", name="Delete pool").click()
    page.get_by_role("dialog", name="Delete pool Bergen?").get_by_role("button", name="Yes, delete").click()
    expect(delete.get_by_role("alert")).to_have_text(
        "The pool still has 1 server or domain and 0 leases; remove or rebind them first."
    )
    expect(page.get_by_role("heading", level=1, name="Bergen")).to_be_visible()
    names = [p["name"] for p in broker.ok("GET", f"/v1/estates/{eid}/pools", admin)["items"]]
    assert "Bergen" in names

    # Remove server: already gone; the error is shown as text, not as markup.
    page.goto(f"{broker.url}/console/#/pools/{tromso['id']}")
    expect(page.get_by_role("heading", level=1, name="Tromsø")).to_be_focused()
    server_id = broker.ok("GET", f"/v1/estates/{eid}/servers?pool={tromso['id']}", admin)["items"][0]["id"]
    broker.ok("DELETE", f"/v1/estates/{eid}/servers/{server_id}", admin, status=204)
    servers = page.get_by_role("region", name="Servers and domains")
    servers.get_by_role("button", name="Remove host-north").click()
    page.get_by_role("dialog", name="Remove server host-north?").get_by_role("button", name="Yes, remove").click()
    expect(servers.get_by_role("alert")).to_have_text("No such server or domain in this estate.")
    console.assert_clean()


def test_the_code_just_made_is_shown_once_on_its_pools_codes_page(console: Console) -> None:
    broker, page = console.broker, console.page
    est = broker.estate("Kyst")
    eid, admin = est["id"], est["admin_token"]
    so = broker.purchase(eid, "SO-5001", 3, "one-in-one-out")
    pool = broker.ok(
        "POST",
        f"/v1/estates/{eid}/pools",
        admin,
        {"name": "Ålesund", "moves": [{"purchase_id": so["id"], "count": 1}]},
        201,
    )

    console.sign_in(admin)
    page.goto(f"{broker.url}/console/#/pools/{pool['id']}")
    expect(page.get_by_role("heading", level=1, name="Ålesund")).to_be_focused()
    page.get_by_role("button", name="Authenticate server/domain").click()
    code = page.locator("#auth-code")
    expect(code).to_have_text(re.compile(r"^\d{4} \d{4}$"))
    first = code.inner_text()

    # A reload does not show it again: the page offers a new code instead.
    page.reload()
    expect(page.get_by_role("heading", level=1, name="Authenticate server/domain")).to_be_focused()
    expect(code).to_have_count(0)
    page.get_by_role("button", name="Make a new code").click()
    expect(code).to_have_text(re.compile(r"^\d{4} \d{4}$"))
    assert code.inner_text() != first

    # Nor does a later visit through the pool page's link.
    page.get_by_role("link", name="Ålesund").click()
    expect(page.get_by_role("heading", level=1, name="Ålesund")).to_be_focused()
    page.get_by_role("link", name="Live codes").click()
    expect(page.get_by_role("heading", level=1, name="Authenticate server/domain")).to_be_focused()
    expect(code).to_have_count(0)
    expect(
        page.get_by_role("region", name="Live codes").get_by_role("button", name=re.compile("^Revoke"))
    ).to_have_count(2)
    console.assert_clean()
