"""Usage over time: the sampler, its roll-ups and retention, and the two usage routes.

The sampler is driven by the manual clock (``reaper.sample_usage``, one round a call),
never by waiting: a year of history takes seconds.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from broker import reaper, usage
from broker.services import SERVICES, Services
from shared.timefmt import format_ts
from tests.broker.estate_kit import Estate, assert_problem, base, enroll, estate, lease, new_pool, raw
from tests.conftest import DAY, T0, Broker

HOUR = 3600


def svc(broker: Broker) -> Services:
    return broker.client.app[SERVICES]


async def sample(broker: Broker) -> int:
    return await reaper.sample_usage(svc(broker))


async def stock(broker: Broker) -> tuple[Estate, str, str]:
    """An estate with 10 one-in-one-out seats: 6 moved to Paris, whose server token is returned."""
    est = await estate(broker)
    bought = await broker.purchase(est.id, "SO-1", 10, expires_in_days=800)
    paris = await new_pool(broker, est, "Paris", [{"purchase_id": bought["id"], "count": 6}])
    server = await enroll(broker, est, paris["id"])
    return est, paris["id"], server["server_token"]


async def usage_of(broker: Broker, est: Estate, pool_id: str, query: str = "") -> dict[str, Any]:
    body: dict[str, Any] = await broker.call("GET", f"{base(est)}/pools/{pool_id}/usage{query}", est.admin, status=200)
    return body


def figures(point: dict[str, Any]) -> tuple[int, int, int]:
    return point["allocated"], point["in_use"], point["available"]


async def test_points_fall_on_step_boundaries_and_keep_the_busiest_moment(broker: Broker) -> None:
    est, paris, token = await stock(broker)
    for offset, in_use in ((0, 2), (300, 5), (HOUR - 300, 4), (HOUR, 1)):
        broker.clock.set(T0 + offset)
        await lease(broker, token, "enc-1", in_use, status=201 if offset == 0 else 200)
        assert await sample(broker) == 1
    broker.clock.set(T0 + 2 * HOUR + 17)
    past = await usage_of(broker, est, paris, f"?from={format_ts(T0)}&to={format_ts(T0 + HOUR + 300)}&step=3600")
    assert past["pool_id"] == paris and past["step"] == 3600
    # [T0, T0+1h) held 2, 5 and 4 in use: its point shows the 5; the next hour's only sample held 1.
    assert [p["at"] for p in past["points"]] == [format_ts(T0), format_ts(T0 + HOUR)]
    assert [figures(p) for p in past["points"]] == [(6, 5, 1), (6, 1, 5)]
    assert past["peak_in_use"] == 5
    # A five-minute step shows each round at its own boundary; a from between boundaries
    # starts at the next one.
    fine = await usage_of(broker, est, paris, f"?from={format_ts(T0 + 1)}&to={format_ts(T0 + HOUR + 1)}&step=300")
    assert [(p["at"], p["in_use"]) for p in fine["points"]] == [
        (format_ts(T0 + 300), 5),
        (format_ts(T0 + HOUR - 300), 4),
        (format_ts(T0 + HOUR), 1),
    ]


async def test_the_last_point_is_live_at_the_moment_of_the_request(broker: Broker) -> None:
    est, paris, token = await stock(broker)
    await lease(broker, token, "enc-1", 2)
    await sample(broker)
    broker.clock.advance(1234)
    await lease(broker, token, "enc-2", 3)  # not sampled: only the live point knows
    body = await usage_of(broker, est, paris)
    assert body["step"] == 3600
    assert body["points"][0] == {"at": format_ts(T0), "allocated": 6, "in_use": 2, "available": 4}
    assert body["points"][-1] == {"at": format_ts(T0 + 1234), "allocated": 6, "in_use": 5, "available": 1}
    assert body["peak_in_use"] == 5
    # The default range is the last seven days: a sample eight days old is outside it.
    broker.clock.advance(8 * DAY)
    body = await usage_of(broker, est, paris)
    assert [p["at"] for p in body["points"]] == [format_ts(T0 + 1234 + 8 * DAY)]
    assert body["points"][0]["in_use"] == 0  # its leases lapsed meanwhile


async def test_roll_ups_fold_at_tier_boundaries_keeping_the_peak(broker: Broker) -> None:
    est, paris, token = await stock(broker)
    series = f"pool:{paris}"
    for offset, count in ((0, 3), (300, 6), (HOUR, 1)):
        broker.clock.set(T0 + offset)
        await lease(broker, token, "enc-1", count, status=201 if offset == 0 else 200)
        await sample(broker)
    await lease(broker, token, "enc-1", 0, status=204)
    # Two days and an hour later the first hour's rounds are due: they fold into one hourly
    # point holding 6; the round at T0+1h sits exactly on the cut-off and stays fine-grained.
    broker.clock.set(T0 + 2 * DAY + HOUR + 600)
    await sample(broker)
    rows = await svc(broker).store.read(partial(usage.stored_rows, estate_id=est.id, series=series))
    assert rows == {300: 2, 3600: 1}
    query = f"?from={format_ts(T0)}&to={format_ts(T0 + 2 * HOUR)}&step=300"
    body = await usage_of(broker, est, paris, query)
    assert [(p["at"], p["in_use"]) for p in body["points"]] == [(format_ts(T0), 6), (format_ts(T0 + HOUR), 1)]
    # Sixty days on, hourly points fold into daily ones the same way.
    broker.clock.set(T0 + 61 * DAY + 600)
    await sample(broker)
    rows = await svc(broker).store.read(partial(usage.stored_rows, estate_id=est.id, series=series))
    assert rows[86400] >= 1 and 3600 in rows
    day = await usage_of(broker, est, paris, f"?from={format_ts(T0)}&to={format_ts(T0 + DAY)}&step=86400")
    assert [(p["at"], p["in_use"]) for p in day["points"]] == [(format_ts(T0), 6)]
    assert day["peak_in_use"] == 6


async def test_a_year_of_sampling_keeps_rows_per_series_bounded(broker: Broker) -> None:
    est, paris, token = await stock(broker)
    await broker.purchase(est.id, "SO-2", 4, "four-in-one-out", expires_in_days=800)
    await broker.call("PATCH", f"{base(est)}/pools/{paris}", est.admin, {"lease_seconds": 30 * DAY}, 200)
    await lease(broker, token, "enc-1", 5)  # the year's peak, a year ago
    await sample(broker)
    await lease(broker, token, "enc-1", 1, status=200)
    end = T0 + 365 * DAY
    # Every six hours for most of the year, then every round of the last two days.
    t = T0
    while t < end - 2 * DAY:
        t += 6 * HOUR
        broker.clock.set(t)
        if (t - T0) % (5 * DAY) == 0:
            await lease(broker, token, "enc-1", 1, status=200)  # renewed every 5 days: live
        await sample(broker)
    while t < end:
        t += 300
        broker.clock.set(t)
        if t % HOUR == 0:
            await lease(broker, token, "enc-1", 1, status=200)
        await sample(broker)
    store = svc(broker).store
    fine_cap, hourly_cap, daily_cap = 2 * DAY // 300 + 1, 60 * 24 + 1, usage.DAILY_KEPT // DAY + 1
    for series in (f"pool:{paris}", f"pool:{est.default_pool}", "type:one-in-one-out", "type:four-in-one-out"):
        rows = await store.read(partial(usage.stored_rows, estate_id=est.id, series=series))
        assert rows[300] <= fine_cap and rows[3600] <= hourly_cap and rows[86400] <= daily_cap, (series, rows)
        assert sum(rows.values()) <= fine_cap + hourly_cap + daily_cap
    # The year-old peak is still there, in its daily point.
    year = await usage_of(broker, est, paris, f"?from={format_ts(T0)}&to={format_ts(end)}&step=86400")
    assert year["points"][0]["at"] == format_ts(T0) and year["points"][0]["in_use"] == 5
    assert year["peak_in_use"] == 5
    assert year["points"][-1]["in_use"] == 1 and year["points"][-1]["at"] == format_ts(end)
    assert len(year["points"]) == 366 + 1  # a point a day, and the live one


async def test_each_round_is_sampled_once_whatever_the_number_of_brokers(broker: Broker) -> None:
    est, _, _ = await stock(broker)
    assert await svc(broker).store.write(partial(usage.sample, now=T0 + 10, estate_id=est.id))
    # Another replica reaching the same round later writes nothing.
    assert not await svc(broker).store.write(partial(usage.sample, now=T0 + 250, estate_id=est.id))
    assert await sample(broker) == 0
    broker.clock.set(T0 + 300)
    assert await sample(broker) == 1


async def test_estate_usage_is_per_licence_type_across_pools(broker: Broker) -> None:
    est, _, token = await stock(broker)
    await broker.purchase(est.id, "SO-2", 4, "four-in-one-out")
    await lease(broker, token, "enc-1", 2)
    await sample(broker)
    broker.clock.advance(600)
    await lease(broker, token, "enc-1", 3, status=200)
    body = await broker.call("GET", f"{base(est)}/usage", est.admin, status=200)
    assert body["estate_id"] == est.id and body["step"] == 3600
    one = body["by_type"]["one-in-one-out"]
    # Both pools' seats of the type together: 10 allocated (6 in Paris, 4 at home).
    assert [figures(p) for p in one["points"]] == [(10, 2, 8), (10, 3, 7)]
    assert one["points"][-1]["at"] == format_ts(T0 + 600) and one["peak_in_use"] == 3
    four = body["by_type"]["four-in-one-out"]
    assert [figures(p) for p in four["points"]] == [(4, 0, 4), (4, 0, 4)]


async def test_bad_ranges_are_validation_errors_and_other_estates_pools_are_not_found(broker: Broker) -> None:
    est, paris, _ = await stock(broker)
    path = f"{base(est)}/pools/{paris}/usage"
    for query, field in (
        ("?step=59", "step"),
        ("?step=hourly", "step"),
        ("?from=yesterday", "from"),
        ("?to=2027-01-01", "to"),
        (f"?from={format_ts(T0 - DAY)}&to={format_ts(T0 - 2 * DAY)}", "from"),
        (f"?from={format_ts(T0 - 365 * DAY)}&step=60", "step"),
    ):
        for route in (path, f"{base(est)}/usage"):
            body = assert_problem(await raw(broker, "GET", route + query, est.admin), 400, "validation_error")
            assert [e["field"] for e in body["errors"]] == [field], (query, body)
    other = await estate(broker, "Other")
    assert_problem(await raw(broker, "GET", f"{base(other)}/pools/{paris}/usage", other.admin), 404, "not_found")
    assert_problem(await raw(broker, "GET", path, other.admin), 404, "not_found")
