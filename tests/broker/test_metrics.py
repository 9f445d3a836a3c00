"""/metrics: the operator's scrape shows live leases, group commit and per-route counts."""

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
    # Route templates, never concrete ids, become labels.
    assert est["id"] not in text
    assert 'route="/v1/estates/{estate}/pools/{pool}/auth-codes"' in text


async def test_metrics_need_the_operator_token(broker: Broker) -> None:
    est = await broker.estate()
    assert (await broker.client.get("/metrics")).status == 401
    resp = await broker.client.get("/metrics", headers=broker.auth(est["admin_token"]))
    assert resp.status == 403
