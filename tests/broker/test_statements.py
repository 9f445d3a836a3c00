"""How many SQL statements the hot write transactions run: acquire, renew, release.

Each statement is work on the event loop (SQLite) or a network round trip (PostgreSQL,
where the domain runs the same statements), so the counts are held here against the
figures in docs/performance.md ("Fewer statements per grant"). Counted with SQLite's
trace callback on the store's own write connection, on a real broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.clock import ManualClock
from broker.services import SERVICES
from broker.store.sqlite import SqliteStore
from tests.broker.leasing import Site, make_site
from tests.conftest import Broker


@pytest.fixture
async def quiet_broker(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> Broker:
    """A broker whose housekeeping writes nothing while a request is counted."""
    app = create_app(config_factory(reaper_interval_seconds=3600, usage_check_seconds=300))
    return Broker(await aiohttp_client(app), operator_token, clock)


class Trace:
    def __init__(self, broker: Broker) -> None:
        store = broker.client.app[SERVICES].store
        assert isinstance(store, SqliteStore)
        self.store = store
        self.statements: list[str] = []

    async def count(self, call: Awaitable[Any]) -> tuple[Any, list[str]]:
        """The call's answer, and the domain statements of its transaction (those inside
        the job's SAVEPOINT: BEGIN, SAVEPOINT, RELEASE and COMMIT are the store's)."""
        conn = self.store._conn
        assert conn is not None
        self.statements = []
        conn.set_trace_callback(self.statements.append)
        try:
            answer = await call
        finally:
            conn.set_trace_callback(None)
        framing = ("BEGIN IMMEDIATE", "SAVEPOINT job", "RELEASE job", "COMMIT")
        assert [s for s in self.statements if s in framing] == list(framing), self.statements
        return answer, [s for s in self.statements if s not in framing]


def _shown(stmts: list[str]) -> str:
    return "\n".join(" ".join(line for line in s.split() if not line.startswith("--"))[:120] for s in stmts)


@pytest.mark.sqlite_only  # SQLite's trace callback; PostgreSQL runs the same domain statements
async def test_acquire_renew_and_release_run_few_statements(quiet_broker: Broker) -> None:
    """Before this was counted: a new lease 12 statements, a renewal 5, a release 8 (the
    binding, the encoder's lease, its seats and the estate's last audit hash each read on
    their own, and the soft-lock window and the pool's limits read even where absent)."""
    site: Site = await make_site(quiet_broker, [("SO-1", 5, 365, "one-in-one-out")])
    trace = Trace(quiet_broker)
    await site.acquire("warm-up", 1, status=201)  # the estate's chain and the server's last_seen exist
    lease, first = await trace.count(site.acquire("enc-1", 1, status=201))
    _, grow = await trace.count(site.acquire("enc-1", 2, status=200))
    _, renew = await trace.count(site.renew(lease["id"], status=200))
    _, release = await trace.count(site.release(lease["id"]))
    _, again = await trace.count(site.acquire("enc-1", 1, status=201))
    # binding + lease + due leases + window + limits; last_seen; the grantable holdings;
    # the lease, its holding and its seat; the encoder's window (its first grant only);
    # the audit event with its link.
    assert len(first) <= 8, _shown(first)
    assert len(again) <= 7, _shown(again)
    assert len(grow) <= 9, _shown(grow)
    # binding + lease + seats; last_seen; the lease's new expiry.
    assert len(renew) <= 3, _shown(renew)
    # binding + lease + seats; the lease ended; its holding; the encoder's window; the event.
    assert len(release) <= 5, _shown(release)
