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
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from broker.store.postgres import migrate

ADMIN_URL = os.environ.get("TENURE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
FAST_COMMITS = "%20-c%20synchronous_commit%3Doff"
TEST_SECRET_KEY = base64.b64encode(b"tenure-test-secret-key-32-bytes!").decode()


# What ``PostgresServer._definition`` compares: a test's schema against a pristine one.
DEFINITION = """
SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
    SELECT concat_ws(':', 'column', table_name, column_name, data_type, is_nullable,
                     column_default, is_identity) AS x
      FROM information_schema.columns WHERE table_schema = %(s)s
    UNION ALL SELECT concat_ws(':', 'index', indexname, indexdef) FROM pg_indexes WHERE schemaname = %(s)s
    UNION ALL SELECT concat_ws(':', 'constraint', conname, pg_get_constraintdef(oid))
      FROM pg_constraint WHERE connamespace = %(s)s::regnamespace
    UNION ALL SELECT concat_ws(':', 'relation', relname, relkind, relacl::text)
      FROM pg_class WHERE relnamespace = %(s)s::regnamespace
    UNION ALL SELECT concat_ws(':', 'type', typname) FROM pg_type WHERE typnamespace = %(s)s::regnamespace
    UNION ALL SELECT concat_ws(':', 'function', proname, md5(prosrc))
      FROM pg_proc WHERE pronamespace = %(s)s::regnamespace
    UNION ALL SELECT concat_ws(':', 'trigger', tgname, tgrelid::regclass::text)
      FROM pg_trigger JOIN pg_class ON pg_class.oid = tgrelid
     WHERE relnamespace = %(s)s::regnamespace AND NOT tgisinternal
    UNION ALL SELECT concat_ws(':', 'migration', version) FROM {schema}.tenure_schema
) AS definition
"""


class Pristine(NamedTuple):
    """The schema migrated once per run and never handed out, which others are held to."""

    schema: str
    definition: str  # PostgresServer._definition
    tables: list[str]  # but tenure_schema, whose rows the definition holds
    sequences: list[str]
    seeded: list[str]  # the tables the migrations put rows in


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class PostgresServer:
    """The test run's own database, and in it a schema per test, as new.

    A schema is much cheaper than a database made from a template (~300 ms: PostgreSQL
    copies and flushes the whole catalogue). The store sees only its schema, through the
    URL's ``search_path``; nothing in it names a schema. Tests that need a database of
    their own (an empty one) still get one.

    Migrating a schema takes ~190 ms (its tables and indexes made and flushed), and there
    are hundreds of PostgreSQL tests; so a finished test's schema is given to the next
    one, emptied, when it is provably still what the migrations make: its definition (as
    ``_definition`` reads it) the same as a pristine schema's, migrated once per run and
    never handed out. It is renamed first, so that a broker a test left running can no
    longer reach it, then every row deleted, the identity sequences restarted, and the
    rows the migrations insert copied from the pristine schema: ~15 ms. Anything else
    (a test that changed the schema, a lock that does not come) and it is dropped, as
    before, and a new one migrated.
    """

    def __init__(self, admin: psycopg.Connection[tuple[object, ...]]) -> None:
        self._admin = admin
        self._prefix = f"tenure_test_{os.getpid()}"
        self._numbers = itertools.count(1)
        self._stale: list[str] = []
        self._spare: list[str] = []  # finished tests' schemas, to be emptied and reused
        self._pristine: Pristine | None = None
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
        """A schema in the run's database, migrated and as new: the URL that opens it."""
        self._drop_stale()
        pristine = self._pristine_schema()
        while self._spare:
            schema = self._emptied(self._spare.pop(), pristine)
            if schema is not None:
                return self._url(schema)
        return self._url(self._migrated())

    def _url(self, schema: str) -> str:
        # A test's commits need not survive a power cut: no WAL flush per commit.
        return with_database(ADMIN_URL, self._prefix) + f"?options=-c%20search_path%3D{schema}{FAST_COMMITS}"

    def _migrated(self) -> str:
        schema = f"t{next(self._numbers)}"
        self._run.execute(f"CREATE SCHEMA {schema}")
        with psycopg.connect(self._url(schema), autocommit=True) as conn:
            migrate(conn)
        return schema

    def _pristine_schema(self) -> Pristine:
        if self._pristine is None:
            schema = self._migrated()
            rows = self._run.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))
            tables = [str(name) for (name,) in rows.fetchall() if name != "tenure_schema"]
            sequences = self._run.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = %s", (schema,))
            seeded = [
                t
                for t in tables
                if self._run.execute(f"SELECT EXISTS (SELECT FROM {schema}.{t})").fetchone() == (True,)
            ]
            self._pristine = Pristine(
                schema, self._definition(schema), tables, [str(name) for (name,) in sequences.fetchall()], seeded
            )
        return self._pristine

    def _definition(self, schema: str) -> str:
        """Everything a test could have changed in ``schema`` but its rows: every relation
        with its columns, indexes, constraints and privileges, the types and functions in
        it, and the migrations recorded, with the schema's own name taken out."""
        row = self._run.execute(DEFINITION.format(schema=schema), {"s": schema}).fetchone()
        return str(row[0] if row else "").replace(f"{schema}.", "")

    def _emptied(self, schema: str, pristine: Pristine) -> str | None:
        """``schema`` under a new name, emptied, or None (then dropped) if it is not as
        the migrations made it or cannot be had at once. Its tables and sequences are
        the pristine schema's: the definitions match."""
        fresh = f"t{next(self._numbers)}"
        try:
            if self._definition(schema) != pristine.definition:
                raise LookupError(f"schema {schema} was changed by its test")
            with self._run.transaction():
                self._run.execute(
                    " ".join(
                        [
                            "SET LOCAL lock_timeout = '2s';",
                            f"ALTER SCHEMA {schema} RENAME TO {fresh};",
                            # Rows go in any order: no foreign key is checked meanwhile.
                            "SET LOCAL session_replication_role = replica;",
                            *(f"DELETE FROM {fresh}.{t};" for t in pristine.tables),
                            *(f"ALTER SEQUENCE {fresh}.{q} RESTART;" for q in pristine.sequences),
                            *(f"INSERT INTO {fresh}.{t} SELECT * FROM {pristine.schema}.{t};" for t in pristine.seeded),
                        ]
                    ).encode()
                )
        except (LookupError, psycopg.Error):
            self._run.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            return None
        return fresh

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
        background write must not meet a missing table. The next ``create`` reuses or
        drops it.
        """
        self._stale.append(url)

    def _drop_stale(self) -> None:
        while self._stale:
            url = self._stale.pop()
            schema = re.search(r"search_path%3D(\w+)", url)
            if schema is not None:
                self._spare.append(schema.group(1))
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
        for schema in self._spare:
            self._run.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self._run.close()
        self._admin.execute(f"DROP DATABASE IF EXISTS {self._prefix} WITH (FORCE)")
        self._admin.close()
