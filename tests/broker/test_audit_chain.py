"""The audit chain: the recipe docs/design.md gives admins verifies a real broker's
output, names an edited or removed event, and events older than the chain are chained
when a broker of this version starts."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import audit
from broker.app import create_app
from broker.services import SERVICES
from tests.broker.estate_kit import Estate, base, enroll, estate, lease, new_pool
from tests.broker.test_audit import events
from tests.broker.test_check import check, rows
from tests.conftest import Broker
from tests.dbaccess import Database

ROOT = Path(__file__).resolve().parents[2]


def recipe() -> str:
    """The Python block of docs/design.md that verifies a chain by hand."""
    text = (ROOT / "docs" / "design.md").read_text()
    blocks = re.findall(r"```python\n(# verify_chain\.py.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/design.md has one verify_chain.py recipe"
    return blocks[0]


async def busy_estate(broker: Broker, name: str = "Acme Broadcast") -> Estate:
    """An estate whose log has most kinds of event, names outside ASCII among them."""
    est = await estate(broker, name)
    p = await broker.purchase(est.id, "SO-Zürich-№1", quantity=10)
    pool = await new_pool(broker, est, "Köln 🎥", [{"purchase_id": p["id"], "count": 4}])
    srv = await enroll(broker, est, pool["id"], "hôte-1")
    await lease(broker, srv["server_token"], "enc-1", 3)
    await lease(broker, srv["server_token"], "enc-1", 1, status=200)
    await broker.call("DELETE", f"{base(est)}/servers/{srv['server_id']}", est.admin, status=204)
    return est


async def test_the_documented_recipe_verifies_a_real_broker_and_names_a_tampered_event(
    broker: Broker, tmp_path: Path
) -> None:
    est = await busy_estate(broker)
    await busy_estate(broker, "Other")  # chains are per estate: the other's events interleave
    script = tmp_path / "verify_chain.py"
    script.write_text(recipe())
    url = str(broker.client.make_url("")).rstrip("/")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script), url, est.id],
        capture_output=True,
        text=True,
        timeout=30,
        env={"TENURE_TOKEN": est.admin},
    )
    got = await events(broker, est)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"whole: {len(got)} events, newest hash {got[-1]['hash']}\n"
    assert got[0]["prev_hash"] == "0" * 64
    assert [e["prev_hash"] for e in got[1:]] == [e["hash"] for e in got[:-1]]
    # The broker's own definition agrees with the recipe's, event by event.
    assert all(audit.link(e["prev_hash"], e) == e["hash"] for e in got)

    space: dict[str, Any] = {}
    exec(compile(recipe(), "verify_chain.py", "exec"), space)  # the documented recipe itself
    verify = space["verify"]
    edited = [dict(e) for e in got]
    edited[3]["details"] = {**edited[3]["details"], "count": 9}
    assert verify(edited) == f"broken at event {got[3]['id']}: its hash does not match its contents"
    removed = got[:2] + got[3:]
    assert verify(removed) == f"broken at event {got[3]['id']}: its prev_hash is not the hash of the event before it"


@pytest.mark.sqlite_only  # an SQLite database of schema 5 upgraded (PostgreSQL's schema began chained)
async def test_events_from_before_the_chain_are_chained_when_the_broker_starts(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    broker: Broker,
) -> None:
    est = await busy_estate(broker)
    other = await busy_estate(broker, "Other")
    before = await events(broker, est)
    await broker.client.close()
    data = config_factory().data_dir
    db = data / "tenure.db"
    # What a broker of schema 5 left: the same rows, without the chain's columns.
    conn = sqlite3.connect(db)
    for column in ("prev_hash", "hash"):
        conn.execute(f"ALTER TABLE events DROP COLUMN {column}")
    for table in ("stream_events", "stream_horizon"):  # the agents' event stream, later still
        conn.execute(f"DROP TABLE {table}")
    # Nor what later migrations added (the licence policies).
    for table in ("encoder_windows", "soft_locks", "server_limits"):
        conn.execute(f"DROP TABLE {table}")
    for column in ("soft_lock_hardware", "soft_lock_container"):
        conn.execute(f"ALTER TABLE pools DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 5")
    conn.close()

    # check (which upgrades the schema as any command does) names each estate's unchained log.
    found = await asyncio.to_thread(check, data)
    assert found.returncode == 1
    firsts = dict(rows(Database(None, db), "SELECT estate_id, MIN(id) FROM events GROUP BY estate_id"))
    assert sorted(found.stdout.splitlines()) == sorted(
        f"estate {e.id}: audit chain broken at event {firsts[e.id]}: it is not chained yet (written before the "
        "audit log was chained; a broker of this version chains such events when it starts)"
        for e in (est, other)
    )

    again = Broker(await aiohttp_client(create_app(config_factory())), broker.operator, broker.clock)
    after = await events(again, est)
    assert [{k: v for k, v in e.items() if k not in ("hash", "prev_hash")} for e in after] == [
        {k: v for k, v in e.items() if k not in ("hash", "prev_hash")} for e in before
    ]
    assert [e["hash"] for e in after] == [e["hash"] for e in before]  # the same chain, rebuilt
    # New events chain on, and the whole database checks out.
    await again.purchase(est.id, "SO-NEW", quantity=1)
    newest = (await events(again, est))[-1]
    assert newest["prev_hash"] == after[-1]["hash"] and audit.link(newest["prev_hash"], newest) == newest["hash"]
    clean = await asyncio.to_thread(check, data)
    assert clean.returncode == 0, clean.stdout


async def test_an_event_written_onto_an_unchained_log_chains_the_log_first(broker: Broker) -> None:
    """The insert reads the estate's last hash itself (``event_append``); where that event
    has none yet, the log is chained, the new event last, into the chain it would have had."""
    est = await busy_estate(broker)
    before = await events(broker, est)
    # A log from before the chain (a broker chains it when it starts; here it meets a write).
    assert broker.db.run("UPDATE events SET prev_hash = NULL, hash = NULL WHERE estate_id = ?", (est.id,)) > 1
    await broker.purchase(est.id, "SO-NEW", quantity=1)
    after = await events(broker, est)
    assert [e["hash"] for e in after[:-1]] == [e["hash"] for e in before]  # the same chain, rebuilt
    newest = after[-1]
    assert newest["details"]["sales_order"] == "SO-NEW"
    assert newest["prev_hash"] == before[-1]["hash"] and audit.link(newest["prev_hash"], newest) == newest["hash"]
    whole = await broker.call("GET", f"{base(est)}/events/chain", est.admin, status=200)
    assert whole["whole"] and whole["checked"] == len(after), whole


async def test_the_api_verifies_the_chain_a_slice_at_a_time_and_names_a_break(broker: Broker) -> None:
    est = await busy_estate(broker)
    await busy_estate(broker, "Other")
    got = await events(broker, est)
    whole = await broker.call("GET", f"{base(est)}/events/chain", est.admin, status=200)
    assert whole == {
        "whole": True,
        "checked": len(got),
        "last": {"id": got[-1]["id"], "hash": got[-1]["hash"]},
        "broken": None,
        "next": None,
    }
    # A slice at a time (the console's walk): each starts from the hash the last one ended on.
    store = broker.client.app[SERVICES].store
    walked, after, slices = 0, 0, 0
    while True:
        part = await store.read(lambda tx, after=after: audit.walk(tx, est.id, after=after, limit=3))
        assert part.broken_at is None
        walked, slices = walked + part.checked, slices + 1
        if not part.more:
            break
        assert part.last_id is not None
        after = part.last_id
    assert (walked, slices, part.last_hash) == (len(got), -(-len(got) // 3), got[-1]["hash"])
    past = await broker.call("GET", f"{base(est)}/events/chain?after={got[4]['id']}", est.admin, status=200)
    assert past["checked"] == len(got) - 5 and past["whole"]

    broker.db.run("UPDATE events SET actor_name = 'Mallory' WHERE id = ?", (int(got[6]["id"]),))
    broken = await broker.call("GET", f"{base(est)}/events/chain", est.admin, status=200)
    assert broken == {
        "whole": False,
        "checked": 6,
        "last": {"id": got[5]["id"], "hash": got[5]["hash"]},
        "broken": {"id": got[6]["id"], "reason": "its hash does not match its contents (the row was edited)"},
        "next": None,
    }
    # Another estate's chain is its own, and its admin cannot walk this one.
    other = await estate(broker, "Third")
    await broker.call("GET", f"{base(est)}/events/chain", other.admin, status=404)
    assert (await broker.call("GET", f"{base(other)}/events/chain", other.admin, status=200))["whole"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
NAME = st.none() | st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    details=st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    actor=st.tuples(st.sampled_from(["admin", "server", "operator", "system"]), NAME, NAME),
    pool_id=NAME,
    subject_id=NAME,
    at=st.integers(min_value=0, max_value=4_102_444_800),
)
def test_the_insert_hashes_exactly_the_canonical_bytes(
    details: dict[str, Any],
    actor: tuple[str, str | None, str | None],
    pool_id: str | None,
    subject_id: str | None,
    at: int,
) -> None:
    """The write path splices the stored details into the canonical JSON rather than parse
    them back; for any details and names (lone surrogates, quotes, non-ASCII, nesting) its
    bytes are those of the definition, which the API's readers and check recompute."""
    row = {
        "at": at,
        "actor_kind": actor[0],
        "actor_id": actor[1],
        "actor_name": actor[2],
        "action": "pool.updated",
        "pool_id": pool_id,
        "subject_id": subject_id,
        "details": json.dumps(details, separators=(",", ":"), sort_keys=True),
    }
    stored = {**row, "id": 1, "prev_hash": None, "hash": None}
    assert audit._canonical_new(row) == audit.canonical(audit.view(stored))


def test_the_worked_example_in_the_docs_is_what_the_broker_computes() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    example = re.search(r"\$ printf '%s%s' ([0-9a-f]{64}) '(\{.*?\})' \| sha256sum\n([0-9a-f]{64})  -", text)
    assert example is not None, "docs/design.md has the worked example"
    prev, body, digest = example.groups()
    event = json.loads(body)
    assert audit.canonical(event).decode() == body
    assert audit.link(prev, event) == digest
