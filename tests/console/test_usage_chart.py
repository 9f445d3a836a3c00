"""Usage you can see: the fill bar of each pool on the pools list, and on a pool's page the
chart of use over time (inline SVG, role img, "Licence usage over time"), its range picker
and its CSV link, on a desktop and on a phone. A real broker samples its own history (a
round at start, then every 0.2 s); a week of older history is added to its SQLite file
first, as a broker running for that week would have left it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from broker.ids import new_token
from tests.console.conftest import LiveBroker, free_port, open_console, running_broker

pytestmark = pytest.mark.browser

HOUR = 3600


@pytest.fixture(scope="module")
def usage_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveBroker, Path]]:
    data = tmp_path_factory.mktemp("usage-broker")
    env = {"TENURE_USAGE_CHECK_SECONDS": "0.2"}
    with running_broker(data, new_token("op"), free_port(), env) as broker:
        yield broker, data / "d" / "tenure.db"


def seed_week(db: Path, estate_id: str, pool_id: str, allocated: int) -> None:
    """Hourly points for the past week: a working-day rhythm that peaks at ``allocated - 1``."""
    now = int(time.time())
    start = now - now % HOUR - 7 * 24 * HOUR
    rows = []
    for n in range(7 * 24):
        at = start + n * HOUR
        hour = (at // HOUR) % 24
        in_use = max(0, min(allocated - 1, (allocated - 1) * (1 - abs(hour - 13) / 7)))
        rows.append((estate_id, f"pool:{pool_id}", HOUR, at, allocated, int(in_use), allocated - int(in_use)))
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO usage_points VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def stocked(broker: LiveBroker, db: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    est = broker.estate("Harbour Vision")
    bought = broker.purchase(est["id"], "SO-77", 12, "one-in-one-out")
    pool = broker.ok(
        "POST",
        f"/v1/estates/{est['id']}/pools",
        est["admin_token"],
        {"name": "Paris", "moves": [{"purchase_id": bought["id"], "count": 8}]},
        201,
    )
    code = broker.ok("POST", f"/v1/estates/{est['id']}/pools/{pool['id']}/auth-codes", est["admin_token"], {}, 201)
    server = broker.ok("POST", "/v1/enroll", None, {"code": code["code"], "name": "enc-host-1", "kind": "server"}, 201)
    lease = {"encoder": "enc-1", "licence_type": "one-in-one-out", "count": 3}
    broker.ok("POST", "/v1/leases", server["server_token"], lease, 201)
    seed_week(db, est["id"], pool["id"], 8)
    return est, pool


def test_fill_bars_and_the_usage_chart(browser: Any, usage_broker: tuple[LiveBroker, Path]) -> None:
    broker, db = usage_broker
    est, pool = stocked(broker, db)
    with open_console(browser, broker) as console:
        page = console.page
        console.sign_in(est["admin_token"])
        page.get_by_role("link", name="See all pools").first.click()
        paris = page.get_by_role("listitem").filter(has=page.get_by_role("link", name="Paris"))
        expect(paris.get_by_text("3 of 8 allocated licences in use (38%)")).to_be_visible()
        home = page.get_by_role("listitem").filter(has=page.get_by_role("link", name="Default Pool"))
        expect(home.get_by_text("0 of 4 allocated licences in use (0%)")).to_be_visible()
        console.shot("17-pools-fill")

        page.get_by_role("link", name="Paris").click()
        chart = page.get_by_role("img", name="Licence usage over time")
        expect(chart).to_be_visible()
        # The week's peak (7 in use) is in the seeded history; the live figures end the chart.
        expect(page.get_by_text("Over the last week: at most 7 in use; now 3 of 8 allocated.")).to_be_visible()
        assert chart.evaluate("n => n.tagName") == "svg"
        assert chart.locator("path.in-use").count() == 1
        console.shot("17-usage-chart", docs=True)

        page.get_by_role("radio", name="Day").check()
        expect(page.get_by_text(" in use; now 3 of 8 allocated.", exact=False)).to_contain_text("Over the last day")
        expect(chart).to_be_visible()
        page.get_by_role("radio", name="Year").check()
        expect(page.get_by_text("Over the last year: at most 7 in use; now 3 of 8 allocated.")).to_be_visible()

        with page.expect_download() as download:
            page.get_by_role("link", name="Download usage as CSV").click()
        saved = download.value
        assert saved.suggested_filename == f"usage-{pool['id']}.csv"
        lines = Path(saved.path()).read_text().splitlines()
        assert lines[0] == "at,allocated,in_use,available"
        assert lines[-1].endswith(",8,3,5") and len(lines) >= 3
        console.assert_clean()


def test_the_chart_reads_at_phone_width(browser: Any, usage_broker: tuple[LiveBroker, Path]) -> None:
    broker, db = usage_broker
    est, _ = stocked(broker, db)
    with open_console(browser, broker, width=360, height=780) as console:
        page = console.page
        console.sign_in(est["admin_token"])
        page.get_by_role("link", name="See all pools").first.click()
        page.get_by_role("link", name="Paris").click()
        chart = page.get_by_role("img", name="Licence usage over time")
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box is not None and box["width"] <= 360 and box["width"] >= 250
        # Drawn at the width shown: no page-wide sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        chart.scroll_into_view_if_needed()
        console.shot("17-narrow-usage-chart", docs=True)
        console.assert_clean()
