"""``tenure-broker copy-store``: a stopped SQLite broker, built through the real API, copied
by the real command into an empty PostgreSQL database, then served from there by a real
``tenure-broker serve`` process; and every refusal, with nothing written."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from broker import copystore, reaper
from broker.clock import ManualClock
from broker.console import COOKIE
from broker.services import SERVICES
from shared import jws
from tests.broker.estate_kit import Estate, base, enroll, estate, lease, new_pool
from tests.broker.sse import SseReader
from tests.broker.test_cli import clean_env, free_port, run
from tests.broker.test_cli import serve as serve
from tests.conftest import Broker
from tests.dbaccess import Database
from tests.postgres import PostgresServer

# The source is an SQLite broker; the target is a PostgreSQL database of the test's own.
pytestmark = pytest.mark.sqlite_only

LINE = re.compile(
    r"^Copied (?P<estates>\d+) estates?, (?P<live>\d+) live leases?, (?P<events>\d+) events? and (?P<keys>\d+) keys? "
    r"\((?P<rows>[\d,]+) rows in (?P<tables>\d+) tables\) from (?P<source>\S+) into (?P<target>\S+) in \d+\.\d s: "
    r"every row matches, (?P<checked>[^.]+)\. Start the PostgreSQL replicas with this deployment's secret key, "
    r"(?P<secret>.+)\.\n$"
)


@pytest.fixture
def clock() -> ManualClock:
    # The copy's check and the PostgreSQL broker read the real clock: leases must be live by it.
    return ManualClock(float(int(time.time())))


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> Iterator[Any]:
    """Makes empty PostgreSQL databases, each dropped after the test."""
    made: list[str] = []

    def make() -> str:
        url = postgres_server.create_empty()
        made.append(url)
        return url

    yield make
    for url in made:
        postgres_server.drop(url)


def copy_store(data: Path, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run("copy-store", "--to", url, "--data-dir", str(data), env=clean_env(**env))


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def pg_count(url: str, table: str) -> int:
    return int(pg_rows(url, f"SELECT COUNT(*) FROM {table}")[0][0])


async def whole_list(b: Broker, path: str, token: str, limit: int = 2) -> list[dict[str, Any]]:
    """Every item of a paged list, followed through ``next`` a few items at a time."""
    items: list[dict[str, Any]] = []
    after = ""
    while True:
        page = await b.call("GET", f"{path}?limit={limit}{after}", token, status=200)
        items += page["items"]
        if page["next"] is None:
            return items
        after = f"&after={page['next']}"


async def books(b: Broker, est: Estate) -> dict[str, Any]:
    """What an estate's admin sees, every list whole."""
    path = base(est)
    return {
        "pools": await whole_list(b, f"{path}/pools", est.admin),
        "purchases": await whole_list(b, f"{path}/purchases", est.admin),
        "servers": await whole_list(b, f"{path}/servers", est.admin),
        "admins": await whole_list(b, f"{path}/admins", est.admin),
        "codes": await whole_list(b, f"{path}/auth-codes", est.admin),
        "leases": await whole_list(b, f"{path}/leases", est.admin),
        "events": await whole_list(b, f"{path}/events", est.admin, limit=500),
        "chain": await b.call("GET", f"{path}/events/chain", est.admin, status=200),
    }


async def test_a_copied_broker_serves_from_postgresql_with_the_same_books_tokens_and_codes(
    broker: Broker, tmp_path: Path, empty_database: Any, serve: Any
) -> None:
    est = await estate(broker)
    other = await estate(broker, "Other Estate")
    await broker.purchase(other.id, "SO-OTHER", quantity=3)
    # Admins and codes made in one second: their lists' order is their rows' order.
    for name in ("Bob", "Carol", "Dave"):
        await broker.call("POST", f"{base(est)}/admins", est.admin, {"name": name}, 201)
    p1 = await broker.purchase(est.id, "SO-1", quantity=20)
    p2 = await broker.purchase(est.id, "SO-2", quantity=6, licence_type="four-in-one-out")
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": p1["id"], "count": 8}])
    move = {"from_pool": est.default_pool, "to_pool": paris["id"], "items": [{"purchase_id": p2["id"], "count": 2}]}
    await broker.call("POST", f"{base(est)}/moves", est.admin, move, 201)
    srv = await enroll(broker, est, paris["id"], "host-1")  # a used code
    srv2 = await enroll(broker, est, est.default_pool, "host-2")
    held = await lease(broker, srv["server_token"], "enc-1", 3)
    gone = await lease(broker, srv["server_token"], "enc-2", 1)
    await broker.call("DELETE", f"/v1/leases/{gone['id']}", srv["server_token"], status=204)
    await lease(broker, srv2["server_token"], "enc-9", 2)
    live = [await broker.call("POST", f"{base(est)}/pools/{paris['id']}/auth-codes", est.admin, {}, 201) for _ in "abc"]
    revoked = await broker.call("POST", f"{base(est)}/pools/{paris['id']}/auth-codes", est.admin, {}, 201)
    await broker.call("DELETE", f"{base(est)}/auth-codes/{revoked['id']}", est.admin, status=204)
    lyon_req = {"name": "Lyon"}
    lyon_headers = {**broker.auth(est.admin), "Idempotency-Key": "lyon-1"}
    lyon = await (await broker.client.post(f"{base(est)}/pools", json=lyon_req, headers=lyon_headers)).json()
    wrong = await broker.client.post("/v1/enroll", json={"code": "00000000", "name": "x"})
    assert wrong.status == 403, await wrong.text()
    signed_in = await broker.client.post("/console/session", json={"token": est.admin})
    assert signed_in.status == 200, await signed_in.text()
    session = {
        "Cookie": f"{COOKIE}={signed_in.cookies[COOKIE].value}",
        "X-CSRF-Token": (await signed_in.json())["csrf_token"],
    }
    assert await reaper.sample_usage(broker.client.app[SERVICES]) == 2  # usage history to copy
    before = await books(broker, est)
    before_other = await books(broker, other)
    keys_before = await broker.call("GET", "/v1/keys", status=200)
    data = broker.config.data_dir
    db = broker.db
    assert db.rows("SELECT COUNT(*) FROM redemption_attempts")[0][0] >= 1
    assert db.rows("SELECT COUNT(*) FROM console_sessions")[0][0] == 1
    await broker.client.close()  # the SQLite broker stops
    rotated = run("keys", "rotate", "--data-dir", str(data))  # a second signing key, sealed like the first
    assert rotated.returncode == 0, rotated.stderr
    sqlite_counts = {t: db.rows(f"SELECT COUNT(*) FROM {t}")[0][0] for t in ("events", "admins", "auth_codes")}
    stream_top = db.rows("SELECT MAX(id) FROM stream_events")[0][0]  # keys rotate told the agents
    assert stream_top is not None

    target = empty_database()
    done = copy_store(data, target)
    assert done.returncode == 0, done.stderr
    line = LINE.match(done.stdout)
    assert line is not None, done.stdout
    assert (line["estates"], line["live"], line["keys"]) == ("2", "2", "3")
    assert int(line["events"]) == sqlite_counts["events"]
    assert line["checked"] == "all invariants hold"
    assert line["source"] == str((data / "tenure.db").resolve())
    assert line["target"].endswith("/" + target.rsplit("/", 1)[1])
    assert str((data / "secret-key").resolve()) in line["secret"]
    # Ids and rowid order kept; each identity continues past what was copied.
    assert pg_rows(target, "SELECT id FROM events ORDER BY id") == db.rows("SELECT id FROM events ORDER BY id")
    assert pg_rows(target, "SELECT id, seq FROM admins ORDER BY seq") == db.rows(
        "SELECT id, rowid FROM admins ORDER BY rowid"
    )
    assert pg_rows(target, "SELECT id, seq FROM auth_codes ORDER BY seq") == db.rows(
        "SELECT id, rowid FROM auth_codes ORDER BY rowid"
    )
    usage_rows = (
        "SELECT estate_id, series, resolution, at, allocated, in_use, available FROM usage_points ORDER BY 1, 2, 3, 4"
    )
    # A point per pool and per licence type: 3 pools and 2 types here, 1 and 1 in the other estate.
    assert len(db.rows(usage_rows)) == 7
    assert pg_rows(target, usage_rows) == db.rows(usage_rows)
    assert pg_rows(target, "SELECT COUNT(*) FROM usage_rounds") == [(2,)]
    secret = (data / "secret-key").read_text().strip()
    assert secret not in done.stdout + done.stderr

    env = {"TENURE_DATABASE_URL": target, "TENURE_SECRET_KEY": secret}
    checked = run("check", env=clean_env(**env))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == "" and checked.stderr.splitlines()[-1].endswith(": all invariants hold")

    pg = serve("--data-dir", str(tmp_path / "replica"), env=clean_env(TENURE_OPERATOR_TOKEN=broker.operator, **env))
    pg.wait_healthy()
    async with aiohttp.ClientSession(base_url=pg.url) as client:
        again = Broker(client, broker.operator, broker.clock)  # type: ignore[arg-type]
        assert await books(again, est) == before
        assert await books(again, other) == before_other
        # The keys: both signing keys published; an old lease token verifies against them.
        keys_after = await again.call("GET", "/v1/keys", status=200)
        assert len(keys_after["keys"]) == 2 and keys_before["keys"][0] in keys_after["keys"]
        published = jws.keys_from_jwks(keys_after)
        assert jws.verify(held["token"], published, now=time.time())["lid"] == held["id"]
        # An old server token renews its lease; a new token is signed by the rotated key.
        renewed = await again.call("POST", f"/v1/leases/{held['id']}/renew", srv["server_token"], {}, 200)
        assert renewed["id"] == held["id"] and renewed["count"] == 3
        assert jws.unverified_header(renewed["token"])["kid"] == keys_after["keys"][1]["kid"]
        assert jws.verify(renewed["token"], published, now=time.time())["lid"] == held["id"]
        # A live code made before the copy enrols after it; the revoked one does not.
        enrolled = await again.call("POST", "/v1/enroll", None, {"code": live[0]["code"], "name": "host-3"}, 201)
        refused = await again.call("POST", "/v1/enroll", None, {"code": revoked["code"], "name": "host-4"})
        assert refused["status"] >= 400
        # The idempotency record answers the retry; the console session carries on.
        retried = await client.post(f"{base(est)}/pools", json=lyon_req, headers=lyon_headers)
        assert retried.status == 201 and (await retried.json()) == lyon
        me = await again.call("GET", "/v1/me", headers=session, status=200)
        assert me["kind"] == "admin" and me["estate_id"] == est.id
        # New rows follow the copied ones: an admin made now lists last, events go on.
        erin = await again.call("POST", f"{base(est)}/admins", est.admin, {"name": "Erin"}, 201)
        admins = await whole_list(again, f"{base(est)}/admins", est.admin)
        assert [a["id"] for a in admins] == [a["id"] for a in before["admins"]] + [erin["id"]]
        events = await whole_list(again, f"{base(est)}/events", est.admin, limit=500)
        assert events[: len(before["events"])] == before["events"]
        assert min(int(e["id"]) for e in events[len(before["events"]) :]) > max(int(e["id"]) for e in before["events"])
        assert enrolled["server_id"] in {s["id"] for s in await whole_list(again, f"{base(est)}/servers", est.admin)}
        # An agent's event stream resumes across the copy: no resync, and what comes next
        # has a later id than anything the SQLite broker gave.
        headers = {**again.auth(srv["server_token"]), "Last-Event-ID": str(stream_top)}
        async with client.get("/v1/stream", headers=headers) as resp:
            assert resp.status == 200
            await again.call("DELETE", f"{base(est)}/leases/{held['id']}", est.admin, status=204)
            got = await SseReader(resp).event()
            assert got.event == "lease.revoked" and int(got.id or 0) > stream_top
    assert pg_rows(target, f"SELECT id FROM stream_events WHERE id <= {int(stream_top)} ORDER BY id") == db.rows(
        "SELECT id FROM stream_events ORDER BY id"
    )
    assert pg.stop() == 0
    after = run("check", env=clean_env(**env))
    assert after.returncode == 0, after.stdout + after.stderr


async def test_copy_store_refuses_a_running_broker_a_full_target_and_a_missing_or_wrong_secret_key(
    broker: Broker, empty_database: Any
) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, quantity=5)
    data = broker.config.data_dir
    target = empty_database()

    running = copy_store(data, target)  # the broker still has its database open
    assert running.returncode == 1, running.stderr
    assert running.stdout == ""
    assert running.stderr.strip().splitlines()[-1] == (
        f"tenure-broker: {data / 'tenure.db'} is in use by another process: stop the SQLite broker (and any "
        "tenure-broker check, backup or keys rotate on it) first; nothing was copied"
    )
    assert pg_rows(target, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    await broker.client.close()

    secret_file = data / "secret-key"
    secret = secret_file.read_text()
    secret_file.rename(data / "secret-key.away")
    missing = copy_store(data, target)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.startswith(f"tenure-broker: no secret key: the SQLite broker's is {secret_file}")
    assert "TENURE_SECRET_KEY" in missing.stderr and "Traceback" not in missing.stderr
    wrong = copy_store(data, target, TENURE_SECRET_KEY=base64.b64encode(os.urandom(32)).decode())
    assert wrong.returncode == 2, wrong.stderr
    assert "does not open the" in wrong.stderr and "nothing was copied" in wrong.stderr
    assert pg_rows(target, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]

    given = copy_store(data, target, TENURE_SECRET_KEY=secret.strip())  # the key given, not from the file
    assert given.returncode == 0, given.stderr
    assert given.stdout.count("\n") == 1
    assert given.stdout.rstrip().endswith(
        "secret key, the one given in TENURE_SECRET_KEY (setting 'secret_key'): give it to them the same way."
    )
    full = copy_store(data, target, TENURE_SECRET_KEY=secret.strip())
    assert full.returncode == 1 and full.stdout == ""
    assert "is not empty (it holds rows: 1 in estates, 1 in admins" in full.stderr
    assert "Nothing was changed" in full.stderr
    assert pg_count(target, "estates") == 1

    for url in ("mysql://h/db", "postgresql://127.0.0.1:5432/"):
        bad = copy_store(data, url, TENURE_SECRET_KEY=secret.strip())
        assert bad.returncode == 2 and "--to must be a PostgreSQL URL" in bad.stderr, bad.stderr
    nowhere = run("copy-store", "--to", target, "--data-dir", str(data.parent / "nowhere"))
    assert nowhere.returncode == 2 and "there is no broker database at" in nowhere.stderr


async def test_a_copy_that_would_differ_is_rolled_back_and_named(broker: Broker, empty_database: Any) -> None:
    est = await estate(broker)
    purchase = await broker.purchase(est.id, quantity=5)
    data = broker.config.data_dir
    db: Database = broker.db
    await broker.client.close()

    # SQLite keeps a text in a BLOB column; PostgreSQL would make bytes of it.
    db.run("UPDATE admins SET token_hash = 'not bytes' WHERE id = ?", (est.admin_id,))
    differs = empty_database()
    done = copy_store(data, differs)
    assert done.returncode == 1 and done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert lines[-2] == (
        f"tenure-broker: table admins, row {est.admin_id}: token_hash is 'not bytes' in SQLite, "
        "9 bytes x'6e6f742062797465…' in the copy"
    )
    assert lines[-1].startswith("tenure-broker: the copy differs from the SQLite database; nothing was written to ")
    assert pg_count(differs, "estates") == 0 and pg_count(differs, "key_material") == 0
    db.run("UPDATE admins SET token_hash = ? WHERE id = ?", (b"\x01" * 32, est.admin_id))

    # A value PostgreSQL's column refuses: the copy stops there, and nothing is left.
    db.run("UPDATE purchases SET quantity = 2.5 WHERE id = ?", (purchase["id"],))
    refused = empty_database()
    done = copy_store(data, refused)
    assert done.returncode == 1, done.stderr
    assert "refused the copy: invalid input syntax for type integer" in done.stderr
    assert "nothing was copied" in done.stderr and "Traceback" not in done.stderr
    assert pg_count(refused, "estates") == 0
    db.run("UPDATE purchases SET quantity = 5 WHERE id = ?", (purchase["id"],))

    # A finding the source has already is copied as it is, and said so.
    db.run("UPDATE events SET hash = NULL, prev_hash = NULL")
    same = empty_database()
    done = copy_store(data, same)
    assert done.returncode == 0, done.stderr
    line = LINE.match(done.stdout)
    assert line is not None and line["checked"] == "check finds the same 1 finding in both, and none new"
    assert pg_count(same, "events") == len(db.rows("SELECT id FROM events WHERE hash IS NULL")) > 1
    assert pg_rows(same, "SELECT COUNT(*) FROM events WHERE hash IS NULL") == [(pg_count(same, "events"),)]


def test_a_killed_broker_is_refused_while_it_runs_and_copied_whole_after(
    serve: Any, tmp_path: Path, empty_database: Any
) -> None:
    """A real ``serve`` process: refused while it runs; after SIGKILL (no clean close, its
    last commits maybe not yet checkpointed out of the WAL) the copy holds them."""
    data = tmp_path / "data"
    token = "tnr_op_" + "k" * 43
    broker = serve("--data-dir", str(data), env=clean_env(TENURE_OPERATOR_TOKEN=token))
    broker.wait_healthy()
    request = urllib.request.Request(
        f"{broker.url}/v1/estates",
        data=json.dumps({"name": "Acme", "admin_name": "Alice"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        made = json.loads(resp.read())
    target = empty_database()
    refused = copy_store(data, target)
    assert refused.returncode == 1 and "is in use by another process" in refused.stderr, refused.stderr
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait()
    done = copy_store(data, target)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Copied 1 estate, 0 live leases, ")
    assert pg_rows(target, "SELECT id, name FROM estates") == [(made["id"], "Acme")]
    unreachable = copy_store(data, f"postgresql://postgres@127.0.0.1:{free_port()}/tenure")
    assert unreachable.returncode == 1 and "cannot open the database" in unreachable.stderr, unreachable.stderr
    assert "nothing was copied" in unreachable.stderr and "Traceback" not in unreachable.stderr


async def test_every_table_is_copied_or_named_as_not(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """A table a migration adds must be copied, or named as not copied, on purpose."""
    from broker.store.sqlite import SqliteStore

    store = await SqliteStore.open(tmp_path / "t.db")
    await store.close()
    with sqlite3.connect(tmp_path / "t.db") as conn:
        sqlite_tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    url = postgres_server.create()
    try:
        pg_tables = {n for (n,) in pg_rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    finally:
        postgres_server.drop(url)
    named = {t.name for t in copystore.TABLES} | copystore.NOT_COPIED
    assert sqlite_tables - {"sqlite_sequence"} == named
    assert pg_tables - {"tenure_schema"} == named
