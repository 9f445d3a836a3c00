from tests.conftest import Broker


async def test_estate_pool_code_flow(broker: Broker) -> None:
    est = await broker.estate()
    adm = est["admin_token"]
    p = await broker.purchase(est["id"], quantity=10)
    pools = await broker.call("GET", f"/v1/estates/{est['id']}/pools", adm, status=200)
    assert pools["items"][0]["allocated"] == 10
    pool = await broker.call(
        "POST",
        f"/v1/estates/{est['id']}/pools",
        adm,
        {"name": "Paris", "moves": [{"purchase_id": p["id"], "count": 4}]},
        201,
    )
    assert pool["allocated"] == 4
    code = await broker.call("POST", f"/v1/estates/{est['id']}/pools/{pool['id']}/auth-codes", adm, {}, 201)
    enrolled = await broker.call("POST", "/v1/enroll", None, {"code": code["code"], "name": "enc-1"}, 201)
    lease = await broker.call(
        "POST",
        "/v1/leases",
        enrolled["server_token"],
        {"encoder": "E1", "licence_type": "one-in-one-out", "count": 3},
        201,
    )
    assert lease["count"] == 3
    pools = await broker.call("GET", f"/v1/estates/{est['id']}/pools/{pool['id']}", adm, status=200)
    assert pools["in_use"] == 3 and pools["available"] == 1
