"""How SQLite runs the reads every grant makes: a plan that walks the pool's servers or
leases costs nothing in a small test and half a second an acquire at 20,000 servers
(docs/performance.md, "Recorded run"); timing would not catch it here, the plan does.

The plans are read from a fresh database, as a new broker has it (no ANALYZE
statistics), by SQLite's own EXPLAIN QUERY PLAN."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.store.sqlite import connect, load_queries, migrate

pytestmark = pytest.mark.sqlite_only


def plan(tmp_path: Path, name: str) -> list[str]:
    conn = connect(tmp_path / "plans.db")
    try:
        migrate(conn)
        sql = load_queries()[name]
        params = {p: None for p in re.findall(r"(?<!:):([a-z_]+)", sql)}
        return [row["detail"] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()


def test_the_limits_every_acquire_reads_walk_the_limit_rows_not_the_pools_servers(tmp_path: Path) -> None:
    steps = plan(tmp_path, "limits_in_pool")
    assert steps[0] == "SCAN sl", steps  # the few servers with limits, not every server of the pool
    assert "SEARCH s USING INDEX sqlite_autoindex_servers_1 (id=?)" in steps, steps
    # Each server's holding of the type is summed over its own leases, not the pool's.
    assert "SEARCH l USING INDEX leases_encoder (server_id=?)" in steps, steps


def test_what_an_acquire_reads_first_is_index_seeks_and_the_limit_rows(tmp_path: Path) -> None:
    steps = plan(tmp_path, "grant_context")
    assert "SEARCH s USING INDEX sqlite_autoindex_servers_1 (id=?)" in steps, steps
    assert "SEARCH l USING INDEX leases_encoder (server_id=? AND encoder=?) LEFT-JOIN" in steps, steps
    assert "SEARCH w USING PRIMARY KEY (pool_id=? AND encoder=?)" in steps, steps
    # Whether the pool has limits: the few limit rows, not the pool's servers.
    assert "SCAN sl" in steps and "SEARCH ls USING INDEX sqlite_autoindex_servers_1 (id=?)" in steps, steps
    assert not any("servers_pool" in s for s in steps), steps
    assert "SEARCH l USING INDEX leases_pool_expiry (pool_id=? AND expires_at<?)" in steps, steps
    assert [s for s in steps if s.startswith("SCAN ")] == ["SCAN sl"], steps


def test_what_a_renewal_reads_first_is_index_seeks(tmp_path: Path) -> None:
    steps = plan(tmp_path, "lease_context")
    assert [s for s in steps if s.startswith("SCAN ")] == [], steps
    assert "SEARCH l USING INDEX sqlite_autoindex_leases_1 (id=?) LEFT-JOIN" in steps, steps
    assert "SEARCH ls USING PRIMARY KEY (lease_id=?) LEFT-JOIN" in steps, steps


def test_an_audit_event_finds_its_estates_last_hash_by_the_index(tmp_path: Path) -> None:
    steps = plan(tmp_path, "event_append")
    # Two copies of one scalar subquery (prev_hash, and inside the hash): each one index search.
    assert steps.count("SEARCH events USING INDEX events_estate (estate_id=?)") == 2, steps
    assert [s for s in steps if s.startswith("SCAN ")] == [], steps
