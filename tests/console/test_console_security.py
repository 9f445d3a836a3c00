"""Escaping, CSRF, CSP, keyboard use and narrow screens, in a real browser."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import Console, LiveBroker

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
XSS_SERVER = "<script>alert(2)</script>"
XSS_ADMIN = "<svg onload=alert(3)>"


def _estate_with_pool(broker: LiveBroker, estate: str, pool: str) -> tuple[str, str, dict[str, Any]]:
    est = broker.estate(estate)
    eid, admin = est["id"], est["admin_token"]
    purchase = broker.purchase(eid, "SO-7", 5, "one-in-one-out")
    created = broker.ok(
        "POST",
        f"/v1/estates/{eid}/pools",
        admin,
        {"name": pool, "moves": [{"purchase_id": purchase["id"], "count": 2}]},
        201,
    )
    return eid, admin, created


def test_names_typed_by_admins_and_agents_render_as_text(console: Console) -> None:
    broker, page = console.broker, console.page
    eid, admin, pool = _estate_with_pool(broker, "<b>Estate</b>", XSS)
    broker.ok("POST", f"/v1/estates/{eid}/admins", admin, {"name": XSS_ADMIN}, 201)
    code = broker.ok("POST", f"/v1/estates/{eid}/pools/{pool['id']}/auth-codes", admin, {}, 201)
    enrolled = broker.ok("POST", "/v1/enroll", None, {"code": code["code"], "name": XSS_SERVER, "kind": "domain"}, 201)
    broker.ok(
        "POST",
        "/v1/leases",
        enrolled["server_token"],
        {"encoder": "E-1", "licence_type": "one-in-one-out", "count": 1},
        201,
    )

    console.sign_in(admin)
    expect(page.get_by_role("heading", level=1, name="<b>Estate</b>")).to_be_visible()
    expect(page.get_by_role("region", name="Admins")).to_contain_text(XSS_ADMIN)
    page.get_by_role("link", name="See all pools").click()
    link = page.get_by_role("link", name=re.compile("^" + re.escape(XSS)))
    expect(link).to_have_accessible_name(f"{XSS} 2 allocated / 1 in use / 1 available")
    link.click()
    expect(page.get_by_role("heading", level=1, name=XSS)).to_be_focused()
    servers = page.get_by_role("region", name="Servers and domains")
    expect(servers.get_by_role("row", name=XSS_SERVER)).to_contain_text("Domain")
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", level=1, name="Audit log")).to_be_focused()
    expect(page.get_by_role("table")).to_contain_text(f"{XSS_SERVER} (domain)")
    console.shot("09-names-as-text")
    assert page.locator("img, svg, b, script:not([src])").count() == 0
    console.assert_clean()


def test_a_state_changing_request_without_the_csrf_token_is_refused(console: Console) -> None:
    broker, page = console.broker, console.page
    eid, admin, _ = _estate_with_pool(broker, "CSRF estate", "Pool A")
    console.sign_in(admin)
    expect(page.get_by_role("heading", level=1, name="CSRF estate")).to_be_visible()
    # Script on the console's own origin, without the token: the cookie alone is not enough.
    result = page.evaluate(
        """async (eid) => {
        const post = (headers) => fetch(`/v1/estates/${eid}/pools`, {
            method: 'POST', headers: {'Content-Type': 'application/json', ...headers},
            body: JSON.stringify({name: 'Sneaky'})});
        const bare = await post({});
        const wrong = await post({'X-CSRF-Token': 'guess'});
        const out = await fetch('/console/session', {method: 'DELETE'});
        const token = (await (await fetch('/console/session')).json()).csrf_token;
        const right = await post({'X-CSRF-Token': token});
        return [bare.status, (await bare.json()).code, wrong.status, out.status, right.status];
    }""",
        eid,
    )
    assert result == [403, "csrf_failed", 403, 403, 201]
    names = [p["name"] for p in broker.ok("GET", f"/v1/estates/{eid}/pools", admin)["items"]]
    assert names == ["Default Pool", "Pool A", "Sneaky"]
    console.assert_clean()


def test_console_answers_carry_a_strict_csp(console: Console) -> None:
    page = console.page
    seen: dict[str, str] = {}
    page.on(
        "response",
        lambda r: seen.setdefault(r.url.rsplit("/", 1)[-1] or "index", r.headers.get("content-security-policy", "")),
    )
    console.open()
    expect(page.get_by_role("textbox", name="Admin token")).to_be_visible()
    for name in ("index", "console.js", "console.css"):
        csp = seen[name]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp, name
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, name
    # The browser enforces it: an injected inline script does not run.
    page.evaluate("""() => {
        const s = document.createElement('script');
        s.textContent = 'window.__ran = true';
        document.body.append(s);
    }""")
    assert page.evaluate("() => window.__ran === undefined")
    assert console.problems and all("Content Security Policy" in p for p in console.problems)


def test_keyboard_only_on_a_narrow_screen(console: Console) -> None:
    broker, page = console.broker, console.page
    _, admin, pool = _estate_with_pool(broker, "Narrow estate", "Lisbon")
    page.set_viewport_size({"width": 390, "height": 844})
    console.open()
    field = page.get_by_role("textbox", name="Admin token")
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    page.keyboard.press("Tab")
    expect(field).to_be_focused()
    page.keyboard.type("tnr_adm_wrong")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("That admin token is unknown or has been revoked.")
    expect(field).to_be_focused()
    field.fill(admin)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1, name="Narrow estate")).to_be_focused()
    page.get_by_role("link", name="See all pools").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1, name="Pools")).to_be_focused()
    page.get_by_role("link", name=re.compile("^Lisbon")).focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1, name="Lisbon")).to_be_focused()
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    console.shot("10-narrow-pool", docs=True)
    page.get_by_role("button", name="Authenticate server/domain").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#auth-code")).to_have_text(re.compile(r"^\d{4} \d{4}$"))
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert pool["name"] == "Lisbon"
    console.assert_clean()
