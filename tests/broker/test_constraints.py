"""The schema's constraints, tripped below the domain's own checks: the store raises the
store-neutral ``ConstraintViolated`` with the constraint's stable name (never its driver's
error), the domain turns it into the 409 the operation means, and nothing of the
refused write persists (docs/design.md, Storage).

The domain's checks make these unreachable while writes are serialized; a store whose
writers run side by side can meet them, so each is forced here directly: a write
function that runs the named queries the way a racing writer would leave them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from broker import estates, leases, pools, purchases
from broker.errors import (
    ConstraintViolated,
    LeaseRace,
    LicencesInUse,
    NameTaken,
    PoolExhausted,
    TenureError,
)
from broker.principal import Principal
from broker.store import open_store
from broker.store.base import Store, Tx
from tests.broker.estate_kit import assert_problem, enroll, estate, lease, raw
from tests.conftest import T0, Broker

OPERATOR = Principal(kind="operator", token_hash=b"")
YEAR = 365 * 86400


@pytest.fixture
async def store(config_factory: Callable[..., Any]) -> AsyncIterator[Store]:
    config = config_factory()
    config.data_dir.mkdir(mode=0o700)
    opened = await open_store(config)
    try:
        yield opened
    finally:
        await opened.close()


async def _stocked(store: Store) -> dict[str, str]:
    """An estate with 2 seats in its Default Pool, and a server bound to it."""

    def fn(tx: Tx) -> dict[str, str]:
        est = estates.create(tx, T0, OPERATOR, "Acme", "Alice", 3600)
        bought = purchases.record(
            tx,
            T0,
            OPERATOR,
            est["id"],
            sales_order="SO-1",
            licence_type="one-in-one-out",
            quantity=2,
            expires_at=int(T0) + YEAR,
        )
        server = Principal(
            kind="server",
            token_hash=b"",
            estate_id=est["id"],
            server_id=tx.new_id("srv"),
            name="enc-1",
            pool_id=est["default_pool_id"],
        )
        tx.run(
            "server_insert",
            id=server.server_id,
            estate_id=est["id"],
            pool_id=est["default_pool_id"],
            name="enc-1",
            kind="server",
            token_hash=b"h" * 32,
            now=int(T0),
        )
        return {
            "estate": est["id"],
            "pool": est["default_pool_id"],
            "purchase": bought["id"],
            "server": server.server_id or "",
        }

    return await store.write(fn)


def _lease_row(ids: dict[str, str], lease_id: str) -> dict[str, Any]:
    return {
        "id": lease_id,
        "estate_id": ids["estate"],
        "pool_id": ids["pool"],
        "server_id": ids["server"],
        "encoder": "enc-a",
        "licence_type": "one-in-one-out",
        "count": 1,
        "expires_at": int(T0) + 600,
    }


async def _refused(store: Store, fn: Callable[[Tx], Any]) -> BaseException:
    with pytest.raises(TenureError) as caught:
        await store.write(fn)
    return caught.value


async def _state(store: Store, ids: dict[str, str]) -> tuple[Any, ...]:
    def fn(tx: Tx) -> tuple[Any, ...]:
        return (
            tx.one("holding_get", pool_id=ids["pool"], purchase_id=ids["purchase"]),
            [p["name"] for p in tx.all("pools_of_estate", estate_id=ids["estate"])],
            tx.all("leases_active_of_server", server_id=ids["server"]),
        )

    return await store.read(fn)


# -- the store: stable names, store-neutral error, nothing persists ----------------


async def test_a_second_pool_of_the_same_name_trips_pools_name(store: Store) -> None:
    ids = await _stocked(store)
    before = await _state(store, ids)

    def clash(tx: Tx) -> None:
        tx.run(
            "pool_insert",
            id=tx.new_id("pool"),
            estate_id=ids["estate"],
            name="DEFAULT POOL",
            name_key="default pool",
            is_default=0,
            lease_seconds=600,
            now=int(T0),
        )

    err = await _refused(store, clash)
    assert isinstance(err, ConstraintViolated) and err.constraint == "pools_name"
    assert not isinstance(err.__cause__, ConstraintViolated)  # the driver's error, kept as the cause
    assert err.problem()["status"] == 409 and err.problem()["code"] == "conflict"
    assert "pools" not in err.problem()["detail"]  # the schema's names stay out of the answer
    assert await _state(store, ids) == before


async def test_more_seats_leased_than_allocated_trips_holdings_leased(store: Store) -> None:
    ids = await _stocked(store)
    before = await _state(store, ids)
    # Unguarded, as a writer that counted seats free before another took them would:
    # holding_unlease with a negative count leases 3 seats of 2; then one too many back.
    err = await _refused(
        store, lambda tx: tx.run("holding_unlease", pool_id=ids["pool"], purchase_id=ids["purchase"], count=-3)
    )
    assert isinstance(err, ConstraintViolated) and err.constraint == "holdings_leased"
    err = await _refused(
        store, lambda tx: tx.run("holding_unlease", pool_id=ids["pool"], purchase_id=ids["purchase"], count=1)
    )
    assert isinstance(err, ConstraintViolated) and err.constraint == "holdings_leased"
    assert await _state(store, ids) == before


async def test_a_second_active_lease_of_one_encoder_trips_leases_encoder(store: Store) -> None:
    ids = await _stocked(store)

    def twice(tx: Tx) -> None:
        for _ in range(2):
            tx.run("lease_insert", **_lease_row(ids, tx.new_id("lse")), now=int(T0))

    err = await _refused(store, twice)
    assert isinstance(err, ConstraintViolated) and err.constraint == "leases_encoder"
    assert (await _state(store, ids))[2] == []  # the first insert went with the second


# -- the domain: each constraint means the operation's own 409 ---------------------


async def test_a_pool_name_taken_meanwhile_is_name_taken(store: Store) -> None:
    ids = await _stocked(store)
    err = await _refused(
        store, lambda tx: pools._insert(tx, T0, tx.new_id("pool"), ids["estate"], "Default Pool", "default pool", 600)
    )
    assert isinstance(err, NameTaken) and isinstance(err.__cause__, ConstraintViolated)
    assert err.problem()["status"] == 409 and err.problem()["code"] == "name_taken"


async def test_a_lease_granted_meanwhile_is_a_lease_race(store: Store) -> None:
    ids = await _stocked(store)

    def twice(tx: Tx) -> None:
        leases._insert(tx, T0, _lease_row(ids, tx.new_id("lse")))
        leases._insert(tx, T0, _lease_row(ids, tx.new_id("lse")))

    err = await _refused(store, twice)
    assert isinstance(err, LeaseRace) and err.problem()["code"] == "lease_race"
    assert err.problem()["status"] == 409 and err.problem()["encoder"] == "enc-a"


async def test_seats_taken_meanwhile_are_pool_exhausted_or_in_use(store: Store) -> None:
    ids = await _stocked(store)
    before = await _state(store, ids)
    # Three seats of two: the guarded UPDATE changes nothing, which was an assert.
    err = await _refused(store, lambda tx: leases._lease_holding(tx, ids["pool"], ids["purchase"], 3))
    assert isinstance(err, PoolExhausted) and err.problem()["code"] == "pool_exhausted"
    err = await _refused(store, lambda tx: pools._take_unused(tx, ids["pool"], ids["purchase"], 3))
    assert isinstance(err, LicencesInUse) and err.problem()["code"] == "licences_in_use"
    assert await _state(store, ids) == before


# -- over HTTP ----------------------------------------------------------------------


async def test_a_tripped_constraint_is_a_409_problem_over_http_never_a_500(broker: Broker) -> None:
    """Books that disagree with a lease (edited behind the broker's back) make releasing
    it trip ``holdings_leased``: the answer is a 409 problem and the lease stays."""
    est = await estate(broker)
    await broker.purchase(est.id, quantity=2)
    server = await enroll(broker, est, est.default_pool)
    granted = await lease(broker, server["server_token"], "enc-a", 1)
    broker.db.run("UPDATE holdings SET leased = 0")
    r = await raw(broker, "DELETE", f"/v1/leases/{granted['id']}", server["server_token"])
    body = assert_problem(r, 409, "conflict")
    assert "constraint" not in body
    assert broker.db.rows("SELECT state FROM leases WHERE id = ?", (granted["id"],)) == [("active",)]
