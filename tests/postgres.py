"""The PostgreSQL server the tests use: a database for the run, a schema per test.

The server is the one at ``TENURE_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``: every machine of this project has it,
trust authentication). Where none answers, the PostgreSQL half of the suite is skipped
with a message saying so, except in CI (``CI`` set), where that is a failure: CI must
never pass without having run it.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from broker.store.postgres import migrate

ADMIN_URL = os.environ.get("TENURE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
FAST_COMMITS = "%20-c%20synchronous_commit%3Doff"
TEST_SECRET_KEY = base64.b64encode(b"tenure-test-secret-key-32-bytes!").decode()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class PostgresServer:
    """The test run's own database, and in it a fresh schema per test.

    A schema (``CREATE SCHEMA`` and the migrations: ~40 ms) is much cheaper than a database
    made from a template (~300 ms: PostgreSQL copies and flushes the whole catalogue). The
    store sees only its schema, through the URL's ``search_path``; nothing in it names a
    schema. Tests that need a database of their own (an empty one) still get one.
    """

    def __init__(self, admin: psycopg.Connection[tuple[object, ...]]) -> None:
        self._admin = admin
        self._prefix = f"tenure_test_{os.getpid()}"
        self._numbers = itertools.count(1)
        self._stale: list[str] = []
        self._admin.execute(f"DROP DATABASE IF EXISTS {self._prefix} WITH (FORCE)")
        self._admin.execute(f"CREATE DATABASE {self._prefix}")
        self._run = psycopg.connect(with_database(ADMIN_URL, self._prefix), autocommit=True)

    @classmethod
    def reach(cls) -> PostgresServer:
        try:
            admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            message = f"no PostgreSQL server at {ADMIN_URL} ({str(exc).strip()}): the PostgreSQL tests cannot run"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        return cls(admin)

    def create(self) -> str:
        """A new schema in the run's database, migrated: the URL that opens it."""
        self._drop_stale()
        schema = f"t{next(self._numbers)}"
        self._run.execute(f"CREATE SCHEMA {schema}")
        # A test's commits need not survive a power cut: no WAL flush per commit.
        url = with_database(ADMIN_URL, self._prefix) + f"?options=-c%20search_path%3D{schema}{FAST_COMMITS}"
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        return url

    def create_empty(self) -> str:
        """A new, empty database of its own: its URL."""
        self._drop_stale()
        name = f"{self._prefix}_{next(self._numbers)}"
        self._admin.execute(f"CREATE DATABASE {name}")
        return with_database(ADMIN_URL, name)

    def drop(self, url: str) -> None:
        """Drop ``url``'s schema or database, once the test is over.

        Not at once: a fixture's finalizer may run before the broker that uses the database
        is closed (pytest tears fixtures down in its own order), and that broker's last
        background write must not meet a missing table. The next ``create`` drops it.
        """
        self._stale.append(url)

    def _drop_stale(self) -> None:
        while self._stale:
            url = self._stale.pop()
            schema = re.search(r"search_path%3D(\w+)", url)
            if schema is not None:
                self._run.execute(f"DROP SCHEMA IF EXISTS {schema.group(1)} CASCADE")
            else:
                self._admin.execute(f"DROP DATABASE IF EXISTS {urlsplit(url).path.lstrip('/')} WITH (FORCE)")

    def terminate(self, url: str) -> int:
        """Kill every other connection to ``url``'s database, as an operator or a failover would."""
        name = urlsplit(url).path.lstrip("/")
        row = self._admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
            (name, self._run.info.backend_pid),
        ).fetchone()
        return int(str(row[0])) if row else 0

    def close(self) -> None:
        self._drop_stale()
        self._run.close()
        self._admin.execute(f"DROP DATABASE IF EXISTS {self._prefix} WITH (FORCE)")
        self._admin.close()
