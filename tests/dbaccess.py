"""Tests' own look at the rows behind a broker, on whichever store it runs.

``Database.of(config)`` opens the broker's database directly, as an operator's SQL client
would: the SQLite file, or the PostgreSQL database. Statements use ``?`` placeholders
(turned into ``%s`` for PostgreSQL); each call is its own transaction.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from broker.config import Config


@dataclass(frozen=True)
class Database:
    url: str | None
    path: Path

    @classmethod
    def of(cls, config: Config) -> Database:
        return cls(config.database, config.db_path)

    @property
    def postgres(self) -> bool:
        return self.url is not None

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.url is not None:
            with psycopg.connect(self.url, autocommit=True) as conn:
                return [tuple(r) for r in conn.execute(sql.replace("?", "%s"), params).fetchall()]
        db = sqlite3.connect(self.path)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def dicts(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if self.url is not None:
            with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
                return conn.execute(sql.replace("?", "%s"), params).fetchall()
        db = sqlite3.connect(self.path)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(sql, params).fetchall()]
        finally:
            db.close()

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One statement, foreign keys unchecked (as the sqlite3 shell runs it by default;
        on PostgreSQL, as a superuser's session in replica mode)."""
        if self.url is not None:
            with psycopg.connect(self.url) as conn:
                conn.execute("SET LOCAL session_replication_role = replica")
                return conn.execute(sql.replace("?", "%s"), params).rowcount
        db = sqlite3.connect(self.path)
        try:
            with db:
                return db.execute(sql, params).rowcount
        finally:
            db.close()

    def dump(self) -> bytes:
        """Everything the database holds, as bytes to search for a secret in clear: the
        SQLite files; or PostgreSQL's ``pg_dump`` with every bytea value decoded too."""
        if self.url is None:
            return b"".join(p.read_bytes() for p in sorted(self.path.parent.glob(self.path.name + "*")))
        schema = re.search(r"search_path%3D(\w+)", self.url)  # the test's own (tests/postgres.py)
        only = ["--schema", schema.group(1)] if schema else []
        dumped = subprocess.run(["pg_dump", "--data-only", *only, self.url], capture_output=True, check=True).stdout
        decoded = b"".join(bytes.fromhex(h.decode()) for h in re.findall(rb"\\\\x([0-9a-f]+)", dumped))
        return dumped + decoded
