"""Eight-digit authentication codes: lifetime, single use, revocation, listing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import codes as broker_codes
from broker.services import SERVICES
from broker.store.base import Tx
from shared.codes import has_valid_check_digit
from shared.timefmt import format_ts
from tests.broker.estate_kit import Estate, assert_problem, base, estate, new_pool, pools, raw
from tests.conftest import DAY, T0, Broker


async def stocked(broker: Broker) -> Estate:
    est = await estate(broker)
    await broker.purchase(est.id, "SO-1", quantity=10)
    return est


async def make(broker: Broker, est: Estate, pool: str | None = None, **body: int) -> dict[str, str]:
    got: dict[str, str] = await broker.call(
        "POST", f"{base(est)}/pools/{pool or est.default_pool}/auth-codes", est.admin, body, 201
    )
    return got


async def redeem(broker: Broker, code: str, name: str = "host-1") -> tuple[int, dict[str, object]]:
    r = await raw(broker, "POST", "/v1/enroll", data=json.dumps({"code": code, "name": name}))
    return r.status, r.json()


async def test_code_is_eight_digits_with_default_lifetime_of_a_day(broker: Broker) -> None:
    est = await stocked(broker)
    code = await make(broker, est)
    assert set(code) == {"id", "code", "pool_id", "expires_at"}
    assert re.fullmatch(r"[0-9]{8}", code["code"])
    assert code["pool_id"] == est.default_pool
    assert code["expires_at"] == format_ts(T0 + DAY)


async def test_ttl_bounds(broker: Broker) -> None:
    est = await stocked(broker)
    assert (await make(broker, est, ttl_seconds=7 * DAY))["expires_at"] == format_ts(T0 + 7 * DAY)
    assert (await make(broker, est, ttl_seconds=60))["expires_at"] == format_ts(T0 + 60)
    for ttl in (7 * DAY + 1, 59, 0, -1, "3600", 3600.5):
        r = await raw(
            broker,
            "POST",
            f"{base(est)}/pools/{est.default_pool}/auth-codes",
            est.admin,
            json.dumps({"ttl_seconds": ttl}),
        )
        body = assert_problem(r, 400, "validation_error")
        assert body["errors"][0]["field"] == "ttl_seconds"


async def test_code_redeems_once(broker: Broker) -> None:
    est = await stocked(broker)
    code = await make(broker, est)
    status, body = await redeem(broker, code["code"])
    assert status == 201 and body["pool_id"] == est.default_pool and body["estate_id"] == est.id
    status, body = await redeem(broker, code["code"], "host-2")
    assert (status, body["code"]) == (403, "auth_code_invalid")
    servers = await broker.call("GET", f"{base(est)}/servers", est.admin, status=200)
    assert [s["name"] for s in servers["items"]] == ["host-1"]


async def test_code_typed_with_a_space_or_dash(broker: Broker) -> None:
    est = await stocked(broker)
    for sep in (" ", "-"):
        code = (await make(broker, est))["code"]
        status, _ = await redeem(broker, code[:4] + sep + code[4:], f"host{sep}")
        assert status == 201


async def test_expired_code_is_refused(broker: Broker) -> None:
    est = await stocked(broker)
    code = await make(broker, est)
    broker.clock.advance(DAY - 1)
    listed = await broker.call("GET", f"{base(est)}/auth-codes", est.admin, status=200)
    assert [c["id"] for c in listed["items"]] == [code["id"]]
    broker.clock.advance(1)
    status, body = await redeem(broker, code["code"])
    assert (status, body["code"]) == (403, "auth_code_invalid")
    assert (await broker.call("GET", f"{base(est)}/auth-codes", est.admin, status=200))["items"] == []


async def test_code_with_short_ttl_expires_at_its_ttl(broker: Broker) -> None:
    est = await stocked(broker)
    code = await make(broker, est, ttl_seconds=600)
    broker.clock.advance(600)
    status, _ = await redeem(broker, code["code"])
    assert status == 403


async def test_code_just_before_expiry_works(broker: Broker) -> None:
    est = await stocked(broker)
    code = await make(broker, est, ttl_seconds=7 * DAY)
    broker.clock.advance(7 * DAY - 1)
    status, _ = await redeem(broker, code["code"])
    assert status == 201


async def test_revoked_code_is_refused(broker: Broker) -> None:
    est = await stocked(broker)
    code = await make(broker, est)
    await broker.call("DELETE", f"{base(est)}/auth-codes/{code['id']}", est.admin, status=204)
    status, body = await redeem(broker, code["code"])
    assert (status, body["code"]) == (403, "auth_code_invalid")
    assert (await broker.call("GET", f"{base(est)}/auth-codes", est.admin, status=200))["items"] == []
    # Revoking again is harmless; an unknown id is not found.
    await broker.call("DELETE", f"{base(est)}/auth-codes/{code['id']}", est.admin, status=204)
    r = await raw(broker, "DELETE", f"{base(est)}/auth-codes/code_nope", est.admin)
    assert_problem(r, 404, "not_found")


async def test_all_refusals_look_the_same(broker: Broker) -> None:
    est = await stocked(broker)
    used, revoked, expired = await make(broker, est), await make(broker, est), await make(broker, est, ttl_seconds=60)
    await redeem(broker, used["code"])
    await broker.call("DELETE", f"{base(est)}/auth-codes/{revoked['id']}", est.admin, status=204)
    broker.clock.advance(61)
    live = {used["code"], revoked["code"], expired["code"]}
    unknown = next(f"{n:08d}" for n in range(10**8) if f"{n:08d}" not in live)
    answers = []
    for c in (used["code"], revoked["code"], expired["code"], unknown, "1234", "abcdefgh"):
        status, body = await redeem(broker, c, "h")
        answers.append((status, body["code"], body["detail"]))
    assert len(set(answers)) == 1 and answers[0][:2] == (403, "auth_code_invalid")


async def test_live_codes_listed_without_digits(broker: Broker) -> None:
    est = await stocked(broker)
    a = await new_pool(broker, est, "Paris")
    default_code = await make(broker, est)
    listed = await broker.call("GET", f"{base(est)}/auth-codes", est.admin, status=200)
    assert listed["items"] == [
        {
            "id": default_code["id"],
            "pool_id": est.default_pool,
            "pool_name": "Default Pool",
            "created_at": format_ts(T0),
            "expires_at": format_ts(T0 + DAY),
            "created_by": est.admin_id,
        }
    ]
    assert default_code["code"] not in json.dumps(listed)
    # Filter by pool (Paris is empty, so it has no codes; the filter shows none).
    assert a["allocated"] == 0
    got = await broker.call("GET", f"{base(est)}/auth-codes?pool={a['id']}", est.admin, status=200)
    assert got["items"] == []
    got = await broker.call("GET", f"{base(est)}/auth-codes?pool={est.default_pool}", est.admin, status=200)
    assert len(got["items"]) == 1


async def test_codes_made_by_the_operator_name_it(broker: Broker) -> None:
    est = await stocked(broker)
    await broker.call("POST", f"{base(est)}/pools/{est.default_pool}/auth-codes", broker.operator, {}, 201)
    listed = await broker.call("GET", f"{base(est)}/auth-codes", est.admin, status=200)
    assert listed["items"][0]["created_by"] == "operator"


async def test_pool_without_valid_licences_refuses_codes(broker: Broker) -> None:
    est = await estate(broker)
    url = f"{base(est)}/pools/{est.default_pool}/auth-codes"
    r = await raw(broker, "POST", url, est.admin, "{}")
    body = assert_problem(r, 409, "no_valid_licences")
    assert "Default Pool" in body["detail"]
    # Expired stock is not valid stock.
    await broker.purchase(est.id, "SO-OLD", quantity=3, expires_in_days=1)
    broker.clock.advance(2 * DAY)
    assert_problem(await raw(broker, "POST", url, est.admin, "{}"), 409, "no_valid_licences")
    # Nor is stock on hold.
    held = await broker.purchase(est.id, "SO-HELD", quantity=3)
    await broker.call("PATCH", f"{base(est)}/purchases/{held['id']}", broker.operator, {"status": "on_hold"}, 200)
    assert_problem(await raw(broker, "POST", url, est.admin, "{}"), 409, "no_valid_licences")
    await broker.call("PATCH", f"{base(est)}/purchases/{held['id']}", broker.operator, {"status": "valid"}, 200)
    await make(broker, est)
    # A custom pool with nothing in it refuses too, even though the estate has stock.
    empty = await new_pool(broker, est, "Empty")
    r = await raw(broker, "POST", f"{base(est)}/pools/{empty['id']}/auth-codes", est.admin, "{}")
    assert_problem(r, 409, "no_valid_licences")


async def test_expiring_stock_is_still_valid_for_codes(broker: Broker) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, "SO-SOON", quantity=1, expires_in_days=3)
    await make(broker, est)


async def test_code_for_unknown_pool_is_404(broker: Broker) -> None:
    est = await stocked(broker)
    r = await raw(broker, "POST", f"{base(est)}/pools/pool_nope/auth-codes", est.admin, "{}")
    assert_problem(r, 404, "not_found")


async def test_codes_are_stored_only_as_macs(broker: Broker, tmp_path: Path) -> None:
    est = await stocked(broker)
    codes = [(await make(broker, est))["code"] for _ in range(5)]
    stored = [row[0] for row in broker.db.rows("SELECT code_mac FROM auth_codes")]
    assert len(stored) == 5 and all(isinstance(m, bytes) and len(m) == 32 for m in stored)
    blob = broker.db.dump()
    for c in codes:
        assert c.encode() not in blob


async def test_codes_made_for_a_custom_pool_bind_to_it(broker: Broker) -> None:
    est = await stocked(broker)
    pur = (await broker.call("GET", f"{base(est)}/purchases", est.admin, status=200))["items"][0]
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": pur["id"], "count": 2}])
    code = await make(broker, est, paris["id"])
    status, body = await redeem(broker, code["code"])
    assert status == 201 and body["pool_id"] == paris["id"] and body["pool_name"] == "Paris"
    assert (await pools(broker, est))["Paris"]["allocated"] == 2


async def test_many_codes_are_distinct(broker: Broker) -> None:
    est = await stocked(broker)
    codes = {(await make(broker, est))["code"] for _ in range(30)}
    assert len(codes) == 30


async def test_every_code_ends_in_its_check_digit(broker: Broker) -> None:
    est = await stocked(broker)
    made = [(await make(broker, est))["code"] for _ in range(40)]
    assert all(has_valid_check_digit(c) for c in made), made


async def test_a_wrong_check_digit_is_refused_as_any_wrong_code_and_counts(broker: Broker) -> None:
    est = await stocked(broker)
    code = (await make(broker, est))["code"]
    typo = code[:7] + str((int(code[7]) + 1) % 10)
    unknown = next(f"{n:08d}" for n in range(10**8) if has_valid_check_digit(f"{n:08d}") and f"{n:08d}" != code)
    answers = set()
    for c in (typo, unknown):
        status, body = await redeem(broker, c)
        answers.add((status, body["code"], body["detail"]))
    assert len(answers) == 1 and next(iter(answers))[:2] == (403, "auth_code_invalid")
    # Eight more wrong check digits: with the two above, the address's ten failures.
    for _ in range(8):
        assert (await redeem(broker, typo))[0] == 403
    status, body = await redeem(broker, code)
    assert (status, body["code"]) == (429, "rate_limited")


async def test_a_code_made_before_check_digits_still_redeems_until_it_expires(broker: Broker) -> None:
    est = await stocked(broker)
    svc = broker.client.app[SERVICES]
    legacy = next(c for c in (f"4821390{d}" for d in range(10)) if not has_valid_check_digit(c))
    now = int(broker.clock.now())

    def insert(tx: Tx) -> None:  # as a broker before check digits stored it
        tx.run(
            "code_insert",
            id="code_legacy",
            estate_id=est.id,
            pool_id=est.default_pool,
            code_mac=broker_codes.mac(svc.code_key, legacy),
            now=now,
            expires_at=now + DAY,
            created_by=est.admin_id,
        )

    await svc.store.write(insert)
    status, body = await redeem(broker, f"{legacy[:4]} {legacy[4:]}")
    assert status == 201, body
    assert body["pool_id"] == est.default_pool


@pytest.mark.parametrize(("late", "status"), [(0, 201), (1, 403)])
async def test_expiry_is_decided_when_the_code_is_used_not_when_the_request_began(
    broker: Broker, late: int, status: int
) -> None:
    est = await stocked(broker)
    code = await make(broker, est, ttl_seconds=60)
    broker.clock.advance(59)
    body = json.dumps({"code": code["code"], "name": "slow-host"}).encode()
    first_sent, rest = asyncio.Event(), asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield body[:1]
        first_sent.set()
        await rest.wait()
        yield body[1:]

    request = asyncio.ensure_future(broker.client.post("/v1/enroll", data=slowly()))
    await first_sent.wait()
    await asyncio.sleep(0.1)  # the broker has the headers and waits for the body
    broker.clock.advance(late)  # 60 s after the code was made: its expiry
    rest.set()
    resp = await request
    answer = await resp.json()
    assert resp.status == status, answer
    if status == 403:
        assert answer["code"] == "auth_code_invalid"
