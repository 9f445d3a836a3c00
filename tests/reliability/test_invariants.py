"""The checks themselves, on both stores: they find a broken book, a broken chain and a
changed row, so that a green run of the suite on either store means something."""

from __future__ import annotations

import pytest

from tests.conftest import Broker
from tests.reliability import kit
from tests.reliability.invariants import Reader, check_books, check_chains, snapshot


async def books(broker: Broker) -> None:
    est = await kit.estate(broker)
    bought = await broker.purchase(est.id, "SO-1", quantity=10)
    pool = await kit.pool(broker, est, "Paris", {bought["id"]: 4})
    host = await kit.enrol(broker, est, pool)
    assert (await kit.acquire(broker, host["server_token"], "ENC-1", 3)).status == 201


async def test_sound_books_pass_and_are_counted(broker: Broker) -> None:
    await books(broker)
    counts = check_books(broker.db)
    assert counts == {"purchases": 1, "holdings": 2, "active_leases": 1, "events": counts["events"]}
    assert counts["events"] >= 5
    with Reader(broker.db) as reader:
        assert check_books(reader) == counts
        assert check_books(reader) == counts  # the reader serves one check after another
    if not broker.db.postgres:
        assert check_books(broker.db.path) == counts


@pytest.mark.parametrize(
    "tamper, finding",
    [
        ("UPDATE holdings SET allocated = allocated + 1 WHERE allocated = 4", r"pur_\w+', 11, 10"),
        ("UPDATE holdings SET leased = leased - 1 WHERE leased = 3", r"pool_\w+', 'pur_\w+'\), 2, 3"),
        ("UPDATE leases SET count = 2", r"^lse_\w+$"),
        ("DELETE FROM lease_seats", "holds no seat"),
    ],
    ids=["holdings-over-quantity", "leased-below-seats", "count-not-seats", "lease-without-seats"],
)
async def test_a_broken_book_is_found(broker: Broker, tamper: str, finding: str) -> None:
    await books(broker)
    assert broker.db.run(tamper) >= 1
    with pytest.raises(AssertionError, match=finding):
        check_books(broker.db)


async def test_a_broken_chain_is_found(broker: Broker) -> None:
    await books(broker)
    assert check_chains(broker.db) >= 5
    (newest,) = broker.db.rows("SELECT max(id) FROM events")[0]
    broker.db.run("UPDATE events SET details = ? WHERE id = ?", ('{"forged": true}', newest))
    with pytest.raises(AssertionError, match="hash"):
        check_chains(broker.db)


async def test_a_snapshot_sees_any_changed_row(broker: Broker) -> None:
    await books(broker)
    with Reader(broker.db) as reader:
        before = snapshot(reader)
        assert before == snapshot(broker.db)
        assert len(before["events"]) >= 5 and len(before["lease_seats"]) == 1
        broker.db.run("UPDATE servers SET name = 'renamed'")
        assert snapshot(reader) != before
