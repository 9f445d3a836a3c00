"""The console's audit log shows the estate's hash chain: its state, its newest hash (to
note), each event's hash; and names the broken link once a row was edited in the database."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker.ids import new_token
from tests.console.conftest import free_port, open_console, running_broker

pytestmark = pytest.mark.browser


def test_the_audit_log_shows_the_chain_whole_then_broken(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with running_broker(tmp_path, new_token("op"), free_port()) as broker:
        est = broker.estate("Chained Estate")
        eid, admin = est["id"], est["admin_token"]
        p = broker.purchase(eid, "SO-1001", 10, "one-in-one-out")
        broker.ok(
            "POST",
            f"/v1/estates/{eid}/pools",
            admin,
            {"name": "Paris", "moves": [{"purchase_id": p["id"], "count": 4}]},
            201,
        )
        events = broker.ok("GET", f"/v1/estates/{eid}/events?limit=500", admin)["items"]
        newest = events[-1]

        with open_console(browser, broker) as console:
            console.sign_in(admin)
            page = console.page
            page.get_by_role("link", name="Audit log").click()
            chain = page.locator(".chain")
            expect(chain).to_have_text(
                f"The audit chain is whole: {len(events)} events check out. "
                f"Newest hash (note it to prove this log later): {newest['hash']}"
            )
            first = page.get_by_role("table").get_by_role("row").nth(1)  # newest first
            expect(first.get_by_role("cell").last).to_have_text(newest["hash"][:12] + "…")
            expect(first.locator("td.hash code")).to_have_attribute(
                "title", f"hash {newest['hash']}\nafter {newest['prev_hash']}"
            )
            console.shot("audit-chain-whole")

            edited = events[1]
            conn = sqlite3.connect(tmp_path / "d" / "tenure.db")
            conn.execute("UPDATE events SET details = replace(details, '10', '12') WHERE id = ?", (int(edited["id"]),))
            conn.commit()
            conn.close()
            page.reload()
            expect(chain).to_have_text(
                re.compile(
                    rf"^The audit chain is broken at event {edited['id']}: its hash does not match its contents "
                    r"\(the row was edited\)\. Events from there on may have been changed; ask your vendor to run "
                    r"tenure-broker check\.$"
                )
            )
            expect(chain).to_have_class("chain broken")
            console.assert_clean()
