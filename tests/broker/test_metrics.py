"""/metrics: the operator's scrape shows live leases, group commit and per-route counts.

A Prometheus server scrapes with the read-only metrics token, which opens nothing else.
"""

import re
from typing import Any

import pytest

from broker.api.http import ROUTES
from broker.app import create_app
from broker.config import ConfigError, load
from tests.conftest import Broker


async def test_metrics_count_leases_commits_and_routes(broker: Broker) -> None:
    est = await broker.estate()
    await broker.purchase(est["id"], quantity=5)
    code = await broker.call(
        "POST", f"/v1/estates/{est['id']}/pools/{est['default_pool_id']}/auth-codes", est["admin_token"], {}, 201
    )
    srv = await broker.call("POST", "/v1/enroll", None, {"code": code["code"], "name": "h1"}, 201)
    for serial in ("E1", "E2"):
        await broker.call(
            "POST",
            "/v1/leases",
            srv["server_token"],
            {"encoder": serial, "licence_type": "one-in-one-out", "count": 2},
            201,
        )

    resp = await broker.client.get("/metrics", headers=broker.auth(broker.operator))
    assert resp.status == 200
    text = await resp.text()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert lines["tenure_live_leases"] == "2"
    assert lines["tenure_seats_in_use"] == "4"
    assert lines["tenure_servers"] == "1"
    assert int(lines["tenure_store_commits_total"]) >= 1
    assert lines['tenure_http_requests_total{method="POST",route="/v1/leases",status="201"}'] == "2"
    # Route templates, never concrete ids, become route labels (ids label only the
    # per-pool figures, as estate and pool).
    assert not [line for line in text.splitlines() if 'route="' in line and est["id"] in line]
    assert 'route="/v1/estates/{estate}/pools/{pool}/auth-codes"' in text


async def test_metrics_need_the_operator_token(broker: Broker) -> None:
    est = await broker.estate()
    assert (await broker.client.get("/metrics")).status == 401
    resp = await broker.client.get("/metrics", headers=broker.auth(est["admin_token"]))
    assert resp.status == 403


METRICS_TOKEN = "tnr_met_" + "m" * 25  # the shortest the setting takes


@pytest.fixture
async def scraped(aiohttp_client: Any, config_factory: Any, operator_token: str, clock: Any) -> Broker:
    client = await aiohttp_client(create_app(config_factory(metrics_token=METRICS_TOKEN)))
    return Broker(client, operator_token, clock)


async def test_the_metrics_token_reads_metrics(scraped: Broker) -> None:
    resp = await scraped.client.get("/metrics", headers=scraped.auth(METRICS_TOKEN))
    assert resp.status == 200 and "tenure_up 1" in await resp.text()
    # The operator token still reads them; a near miss does not.
    assert (await scraped.client.get("/metrics", headers=scraped.auth(scraped.operator))).status == 200
    assert (await scraped.client.get("/metrics", headers=scraped.auth(METRICS_TOKEN + "x"))).status == 401


async def test_the_metrics_token_opens_nothing_else(scraped: Broker) -> None:
    est = await scraped.estate()
    await scraped.purchase(est["id"], quantity=2)
    ids = {"estate": est["id"], "pool": est["default_pool_id"]}
    walked = []
    for r in ROUTES:
        if not r.auth or r.path == "/metrics":
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "x_1"), r.path)
        resp = await scraped.client.request(
            r.method, path, data=b"{}", headers={**scraped.auth(METRICS_TOKEN), "Content-Type": "application/json"}
        )
        assert resp.status in (401, 403), (r.method, r.path, resp.status, await resp.text())
        walked.append(r.path)
    assert len(walked) >= 25
    # Nor does it sign in to the console.
    resp = await scraped.client.post("/console/session", json={"token": METRICS_TOKEN})
    assert resp.status in (401, 403)
    # And nothing changed.
    pools = await scraped.call("GET", f"/v1/estates/{est['id']}/pools", est["admin_token"], status=200)
    assert [p["name"] for p in pools["items"]] == ["Default Pool"]


def test_the_metrics_token_is_masked_in_the_config() -> None:
    cfg = load(None, env={"TENURE_METRICS_TOKEN": METRICS_TOKEN})
    assert cfg.metrics_token == METRICS_TOKEN and METRICS_TOKEN not in repr(cfg)
    with pytest.raises(ConfigError, match="'metrics_token'"):
        load(None, env={"TENURE_METRICS_TOKEN": "tnr_met_short"})
