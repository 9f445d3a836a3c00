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
