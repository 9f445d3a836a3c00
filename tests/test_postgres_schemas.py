"""The tests' PostgreSQL schemas (tests/postgres.py): a finished test's schema is given to
the next one only emptied, out of reach of whatever still holds it, and only when it is
still what the migrations make."""

from __future__ import annotations

import re

import psycopg
import pytest

from tests.postgres import PostgresServer


def _schema(url: str) -> str:
    found = re.search(r"search_path%3D(\w+)", url)
    assert found is not None
    return found.group(1)


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_the_next_test_finds_no_row_of_the_last_and_its_ids_from_one(postgres_server: PostgresServer) -> None:
    first = postgres_server.create()
    with psycopg.connect(first, autocommit=True) as conn:
        for n in range(3):
            conn.execute("INSERT INTO stream_events (at, type, data) VALUES (%s, 't', '{}')", (n,))
        conn.execute("UPDATE health SET probed_at = 99")
    seeded = _rows(first, "SELECT id FROM health")
    postgres_server.drop(first)
    second = postgres_server.create()
    try:
        assert _schema(second) != _schema(first)
        assert _rows(second, "SELECT count(*) FROM stream_events") == [(0,)]
        assert _rows(second, "SELECT id, probed_at FROM health") == [(seeded[0][0], 0)]  # as migrated
        assert _rows(second, "INSERT INTO stream_events (at, type, data) VALUES (0, 't', '{}') RETURNING id") == [(1,)]
        versions = _rows(second, "SELECT count(*) FROM tenure_schema")
        assert versions[0][0] >= 1
    finally:
        postgres_server.drop(second)


def test_a_connection_left_on_a_finished_schema_cannot_reach_it_once_given_out(
    postgres_server: PostgresServer,
) -> None:
    first = postgres_server.create()
    with psycopg.connect(first, autocommit=True) as left:
        postgres_server.drop(first)
        second = postgres_server.create()
        try:
            with pytest.raises(psycopg.errors.UndefinedTable):
                left.execute("INSERT INTO stream_events (at, type, data) VALUES (0, 't', '{}')")
            assert _rows(second, "SELECT count(*) FROM stream_events") == [(0,)]
        finally:
            postgres_server.drop(second)


def test_a_schema_its_test_changed_is_not_given_out_again(postgres_server: PostgresServer) -> None:
    first = postgres_server.create()
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("ALTER TABLE stream_events ADD COLUMN extra TEXT")
        conn.execute("INSERT INTO tenure_schema (version) VALUES (9999)")
    postgres_server.drop(first)
    second = postgres_server.create()
    try:
        columns = _rows(
            second,
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'stream_events' AND table_schema = current_schema()",
        )
        assert ("extra",) not in columns and ("data",) in columns
        assert _rows(second, "SELECT max(version) < 9999 FROM tenure_schema") == [(True,)]
        gone = _rows(second, f"SELECT count(*) FROM pg_namespace WHERE nspname = '{_schema(first)}'")
        assert gone == [(0,)]
    finally:
        postgres_server.drop(second)
