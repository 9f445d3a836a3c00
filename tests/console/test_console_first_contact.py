"""What a new admin meets first: the enrol command's address, a lost session, the audit
log's order and wording, plurals, and one error per refusal; at desktop and phone width."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from broker.ids import new_token
from tests.console.conftest import Console, LiveBroker, free_port, open_console, running_broker

pytestmark = pytest.mark.browser

PUBLIC_URL = "https://licences.example.net"
PHONE = {"width": 390, "height": 844}
SESSION_ENDED = "Your session ended (you were signed out for inactivity or after 12 hours). Sign in again."


@pytest.fixture(scope="module")
def public_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    """A broker whose operator set ``public_url``."""
    with running_broker(
        tmp_path_factory.mktemp("public-broker"), new_token("op"), free_port(), {"TENURE_PUBLIC_URL": PUBLIC_URL}
    ) as broker:
        yield broker


def estate_with_pool(broker: LiveBroker, name: str, pool: str, moved: int = 2) -> tuple[str, str, dict[str, Any]]:
    est = broker.estate(name)
    so = broker.purchase(est["id"], "SO-5001", 5, "one-in-one-out")
    created = broker.ok(
        "POST",
        f"/v1/estates/{est['id']}/pools",
        est["admin_token"],
        {"name": pool, "moves": [{"purchase_id": so["id"], "count": moved}]},
        201,
    )
    return est["id"], est["admin_token"], created


def make_code(console: Console, pool_id: str) -> None:
    console.page.goto(f"{console.broker.url}/console/#/pools/{pool_id}")
    console.page.get_by_role("button", name="Authenticate server/domain").click()
    expect(console.page.locator("#auth-code")).to_have_text(re.compile(r"^\d{4} \d{4}$"))


def fits_the_screen(page: Any) -> bool:
    return bool(page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"))


def test_without_public_url_the_enrol_command_carries_a_warning(console: Console) -> None:
    broker, page = console.broker, console.page
    _, admin, pool = estate_with_pool(broker, "Loopback estate", "Oslo")
    console.sign_in(admin)
    make_code(console, pool["id"])
    expect(page.locator("pre.command")).to_contain_text(f"--broker {broker.url}")
    warning = page.get_by_role("note")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text(f"This command uses the address you opened the console at, {broker.url}")
    expect(warning).to_contain_text("Ask the operator to set public_url")
    expect(warning).to_contain_text("127.0.0.1 is a loopback address: it will not work from an encoder host")
    console.shot("11-auth-code-warning")
    page.set_viewport_size(PHONE)
    expect(warning).to_be_visible()
    assert fits_the_screen(page)
    console.shot("11-narrow-auth-code", docs=True)
    console.assert_clean()


def test_with_public_url_the_command_uses_it_and_warns_of_nothing(browser: Any, public_broker: LiveBroker) -> None:
    _, admin, pool = estate_with_pool(public_broker, "Configured estate", "Rome")
    with open_console(browser, public_broker) as console:
        console.sign_in(admin)
        make_code(console, pool["id"])
        code = console.page.locator("#auth-code").inner_text()
        expect(console.page.locator("pre.command")).to_have_text(f"tenure-agent enroll {code} --broker {PUBLIC_URL}")
        expect(console.page.get_by_role("note")).to_have_count(0)
        expect(console.page.get_by_text("public_url")).to_have_count(0)
        console.assert_clean()


def test_a_session_outlives_a_restart_and_an_ended_one_is_explained(browser: Any, tmp_path: Path) -> None:
    data, operator, port = tmp_path / "restarting", new_token("op"), free_port()
    with running_broker(data, operator, port) as broker:
        est = broker.estate("Restarted estate")
        bob = broker.ok("POST", f"/v1/estates/{est['id']}/admins", est["admin_token"], {"name": "Bob"}, 201)
    with open_console(browser, broker) as console:  # the same address across restarts
        page = console.page
        with running_broker(data, operator, port):
            # A first visit, with no cookie, has nothing to explain.
            console.open()
            expect(page.get_by_role("heading", level=1, name="Sign in to the Tenure console")).to_be_visible()
            expect(page.locator(".notice")).to_have_count(0)
            console.sign_in(bob["token"])
            expect(page.get_by_role("heading", level=1, name="Restarted estate")).to_be_focused()
        with running_broker(data, operator, port) as broker:
            # Sessions are in the database: the open page carries on after the restart.
            page.get_by_role("link", name="See all pools").click()
            expect(page.get_by_role("heading", level=1, name="Pools")).to_be_visible()
            expect(page.locator(".notice")).to_have_count(0)
            # Bob is removed: his session ends, and the page's next call learns why.
            broker.ok("DELETE", f"/v1/estates/{est['id']}/admins/{bob['id']}", est["admin_token"], status=204)
            page.get_by_role("link", name="Audit log").click()
            expect(page.get_by_role("heading", level=1, name="Sign in to the Tenure console")).to_be_visible()
            expect(page.locator(".notice")).to_have_text(SESSION_ENDED)
            console.shot("12-session-ended")
            # Opened afresh (a reload, a bookmark): the old cookie is the clue.
            page.reload()
            expect(page.get_by_role("heading", level=1, name="Sign in to the Tenure console")).to_be_visible()
            expect(page.locator(".notice")).to_have_text(SESSION_ENDED)
            console.sign_in(est["admin_token"])
            expect(page.get_by_role("heading", level=1, name="Restarted estate")).to_be_focused()
            # Signing out on purpose says so, and nothing about a session ending.
            page.get_by_role("button", name="Sign out").click()
            expect(page.locator(".notice")).to_have_text("You have signed out.")
            page.reload()
            expect(page.get_by_role("textbox", name="Admin token")).to_be_visible()
            expect(page.locator(".notice")).to_have_count(0)
        console.assert_clean()


def test_the_audit_log_opens_newest_first_in_words(console: Console) -> None:
    broker, page = console.broker, console.page
    eid, admin, pool = estate_with_pool(broker, "Audited estate", "Paris", moved=4)
    so = broker.ok("GET", f"/v1/estates/{eid}/purchases", admin)["items"][0]
    broker.ok("PATCH", f"/v1/estates/{eid}/pools/{pool['id']}", admin, {"lease_seconds": 7200})
    broker.ok("PATCH", f"/v1/estates/{eid}/purchases/{so['id']}", broker.operator, {"status": "on_hold"})
    console.sign_in(admin)
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", level=1, name="Audit log")).to_be_focused()
    expect(page.get_by_text("Every change in the estate, newest first.")).to_be_visible()
    rows = page.get_by_role("table").locator("tbody tr")
    expect(rows).to_have_count(6)
    whats = [rows.nth(i).get_by_role("cell").nth(1).inner_text() for i in range(6)]
    assert whats == [
        "Purchase changed (hold, expiry)",
        "Pool renamed, lease lifetime or soft-lock changed",
        "Licences moved",
        "Pool created",
        "Purchase recorded",
        "Estate created",
    ]
    details = [rows.nth(i).locator("td.details").inner_text() for i in range(6)]
    assert details == [
        "SO-5001: valid → on hold",
        "lease lifetime 1 h → 2 h",
        "SO-5001: 4 licences moved from Default Pool to Paris",
        "Paris",
        f"SO-5001: 5 licences of one-in-one-out, expires {so['expires_at'][:10]}",
        "Audited estate, with Alice as its first admin",
    ]
    assert not any(c in "".join(details) for c in '{}[]"')
    expect(page.locator(".chain")).to_contain_text("The audit chain is whole: 6 events check out.")
    console.shot("13-audit-log", docs=True)
    page.set_viewport_size(PHONE)
    assert fits_the_screen(page)
    console.shot("13-narrow-audit-log", docs=True)
    console.assert_clean()


def test_counts_read_in_real_plurals(console: Console) -> None:
    broker, page = console.broker, console.page
    eid, admin, pool = estate_with_pool(broker, "Plural estate", "Porto", moved=1)
    code = broker.ok("POST", f"/v1/estates/{eid}/pools/{pool['id']}/auth-codes", admin, {}, 201)
    server = broker.ok("POST", "/v1/enroll", None, {"code": code["code"], "name": "porto-1", "kind": "server"}, 201)
    broker.ok(
        "POST",
        "/v1/leases",
        server["server_token"],
        {"encoder": "ENC-1", "licence_type": "one-in-one-out", "count": 1},
        201,
    )
    console.sign_in(admin)
    page.goto(f"{broker.url}/console/#/pools/{pool['id']}")
    expect(page.get_by_role("heading", level=1, name="Porto")).to_be_focused()
    expect(page.get_by_role("region", name="Delete pool")).to_contain_text(
        "This pool cannot be deleted while it has 1 server and 1 lease. Remove or move them first."
    )
    page.get_by_role("button", name="Remove porto-1").click()
    expect(page.get_by_role("dialog")).to_contain_text("The 1 licence its encoders hold is freed at once.")
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name="Force-release ENC-1").click()
    expect(page.get_by_role("dialog")).to_contain_text("Its 1 one-in-one-out licence goes back to the pool now.")
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    move = page.get_by_role("region", name="Move licences")
    move.get_by_role("spinbutton", name=re.compile("SO-5001")).fill("1")
    move.get_by_role("button", name="Move licences").click()
    expect(page.get_by_role("status")).to_have_text("1 licence moved.")
    move.get_by_role("spinbutton", name=re.compile("SO-5001")).fill("2")
    move.get_by_role("button", name="Move licences").click()
    expect(page.get_by_role("status")).to_have_text("2 licences moved.")
    console.shot("06-pool-plurals")
    for hash_ in ("#/", "#/pools", f"#/pools/{pool['id']}", "#/audit"):
        page.goto(f"{broker.url}/console/{hash_}")
        expect(page.get_by_role("heading", level=1)).to_be_focused()
        assert "(s)" not in page.locator("body").inner_text(), hash_
    console.assert_clean()


def test_a_refused_add_pool_is_explained_once(console: Console) -> None:
    broker, page = console.broker, console.page
    eid, admin, _ = estate_with_pool(broker, "Refused estate", "Madrid")
    console.sign_in(admin)
    page.get_by_role("link", name="Add pool").click()
    page.get_by_role("textbox", name="Pool name").fill("Too big")
    page.get_by_role("spinbutton", name=re.compile("SO-5001")).fill("99")
    page.get_by_role("button", name="Create pool").click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text(
        "Sales order SO-5001 has only 3 unused licences to move; 99 were asked for. Nothing was moved."
    )
    assert alert.inner_text().count("SO-5001") == 1
    expect(page.get_by_role("spinbutton", name=re.compile("SO-5001"))).to_be_focused()
    assert [p["name"] for p in broker.ok("GET", f"/v1/estates/{eid}/pools", admin)["items"]] == [
        "Default Pool",
        "Madrid",
    ]
    console.shot("14-add-pool-refused")
    page.set_viewport_size(PHONE)
    assert fits_the_screen(page)
    console.shot("14-narrow-add-pool-refused", docs=True)
    console.assert_clean()


def test_pool_names_and_the_default_badge_at_phone_width(browser: Any, live_broker: LiveBroker) -> None:
    eid, admin, _ = estate_with_pool(live_broker, "Phone estate", "Studio Lisboa Norte")
    with open_console(browser, live_broker, **PHONE) as console:
        page = console.page
        console.sign_in(admin)
        page.get_by_role("link", name="See all pools").click()
        expect(page.get_by_role("heading", level=1, name="Pools")).to_be_focused()
        default = page.get_by_role("listitem").filter(has=page.get_by_role("link", name=re.compile("^Default Pool")))
        badge, name = default.locator(".badge"), default.locator(".pool-name")
        expect(badge).to_have_text("Default")
        # The badge sits on the name's line, at the card's right edge, not under the counts.
        name_box, badge_box, card_box = name.bounding_box(), badge.bounding_box(), default.bounding_box()
        assert badge_box["y"] < name_box["y"] + name_box["height"]
        assert abs((badge_box["x"] + badge_box["width"]) - (card_box["x"] + card_box["width"])) < 30
        # A name wraps between its words, never inside one.
        lisboa = page.get_by_role("link", name=re.compile("^Studio Lisboa Norte")).locator(".pool-name")
        assert words_whole(lisboa)
        assert fits_the_screen(page)
        console.shot("15-narrow-pools", docs=True)
        # On a pool's page the servers' table squeezes its columns; names still wrap whole.
        pool = broker_pool(live_broker, eid, admin, "Studio Lisboa Norte")
        code = live_broker.ok("POST", f"/v1/estates/{eid}/pools/{pool}/auth-codes", admin, {}, 201)
        live_broker.ok(
            "POST", "/v1/enroll", None, {"code": code["code"], "name": "Lisboa encoders", "kind": "domain"}, 201
        )
        page.goto(f"{live_broker.url}/console/#/pools/{pool}")
        heading = page.get_by_role("heading", level=1, name="Studio Lisboa Norte")
        expect(heading).to_be_focused()
        assert words_whole(heading)
        row = page.get_by_role("region", name="Servers and domains").get_by_role("rowheader", name="Lisboa encoders")
        assert words_whole(row)
        assert fits_the_screen(page)
        console.shot("16-narrow-pool-with-domain", docs=True)
        console.assert_clean()


def broker_pool(broker: LiveBroker, eid: str, admin: str, name: str) -> str:
    pools = broker.ok("GET", f"/v1/estates/{eid}/pools", admin)["items"]
    found: str = next(p["id"] for p in pools if p["name"] == name)
    return found


def words_whole(locator: Any) -> bool:
    """No word of the element's text is split across two lines."""
    return bool(
        locator.evaluate(
            """(node) => {
        const text = node.firstChild;
        const range = document.createRange();
        let start = 0;
        for (const word of text.textContent.split(' ')) {
          range.setStart(text, start);
          range.setEnd(text, start + word.length);
          if (range.getClientRects().length > 1) return false;
          start += word.length + 1;
        }
        return true;
      }"""
        )
    )
