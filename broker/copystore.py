"""``tenure-broker copy-store``: a stopped SQLite broker's whole state into an empty
PostgreSQL database, checked row for row before it is committed.

The steps, and why each is so:

1. **The source is held exclusively.** The SQLite database is opened with
   ``locking_mode = EXCLUSIVE`` before its first read. A connection in that mode takes
   SQLite's exclusive lock on the database file; every open WAL-mode connection holds a
   shared lock on that file for as long as it is open, and a serving broker keeps its
   writer's and its reader's connections open from start to stop. So the lock is refused
   exactly when a broker (or ``check``, ``backup``, ``keys rotate``) has the file open,
   and while it is held no broker can start on the file. Nothing is written to the
   source; closing the connection checkpoints its WAL into the file, as a broker's stop
   does.
2. **The secret key opens every stored key** (as ``signing.unlock`` checks at start):
   the PostgreSQL replicas must be started with the same one, and a copy whose keys they
   could not open would leave every lease token and code unusable.
3. **One PostgreSQL transaction, all or nothing.** The target is migrated by opening a
   ``PostgresStore`` on it; then, in one transaction, its tables are locked against
   writers, found empty, filled with ``COPY`` (ids kept; ``admins.seq`` and
   ``auth_codes.seq`` take SQLite's rowids, so paging keeps its order), and each identity
   sequence is set past the largest id copied (for ``events``, past SQLite's
   AUTOINCREMENT high-water mark too, so no id is ever handed out twice).
4. **Verified before COMMIT.** Inside that transaction every table is read back and
   compared with the source row by row in primary-key order (counts and every value),
   every copied key is opened under the secret key, and ``broker.books.check`` runs on
   both databases: the copy must find nothing the source did not. Any difference rolls
   the whole copy back and is named; the target is left as empty as it was found.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker import books, keyfiles, keymaterial, secretfiles, secretkey
from broker.config import Config
from broker.ids import new_id
from broker.secretkey import KeySealed, SecretKey
from broker.store import sqlite as sqlite_store
from shared.secretfile import folder_owner
from shared.words import count

# How long to wait for the source's exclusive lock, and for the target's table locks.
SOURCE_WAIT_SECONDS = 1.0
TARGET_LOCK_TIMEOUT = "5s"
FETCH_ROWS = 2000


@dataclass(frozen=True)
class Table:
    """One table copied: its primary key (the canonical order) and its id columns."""

    name: str
    key: tuple[str, ...] = ("id",)
    rowid_as: str | None = None  # the PostgreSQL column that stands for SQLite's rowid
    identity: str | None = None  # the column whose sequence is set past the ids copied


# In an order that satisfies every foreign key as rows arrive.
TABLES = (
    Table("estates"),
    Table("admins", rowid_as="seq", identity="seq"),
    Table("pools"),
    Table("purchases"),
    Table("holdings", ("pool_id", "purchase_id")),
    Table("moves"),
    Table("auth_codes", rowid_as="seq", identity="seq"),
    Table("servers"),
    Table("events", identity="id"),
    Table("idempotency", ("key_hash",)),
    Table("leases"),
    Table("lease_seats", ("lease_id", "purchase_id")),
    Table("key_material", ("purpose", "kid")),
    Table("encoder_windows", ("pool_id", "encoder")),
    Table("soft_locks", ("pool_id", "encoder", "purchase_id")),
    Table("server_limits", ("server_id", "licence_type")),
    Table("console_sessions", ("id_hash",)),
    Table("redemption_attempts", identity="id"),
    Table("webhook_endpoints"),
    Table("webhook_events"),
    Table("webhook_outbox"),
    Table("webhook_attempts", identity="id"),
    Table("webhook_marks", ("key",)),
    Table("stream_events", identity="id"),
    Table("stream_horizon"),
    Table("usage_points", ("estate_id", "series", "resolution", "at")),
    Table("usage_rounds", ("estate_id", "at")),
)
# The readiness probe's one row: each database keeps its own (the migration makes it).
NOT_COPIED = frozenset({"health"})


class CopyError(Exception):
    """Nothing was copied; the message says why, in the operator's words. ``exit_code``
    is 2 for what the operator must give (settings, the secret key, the right schema)
    and 1 for the state of either database."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CopyDiffers(CopyError):
    """The copy was rolled back: ``differences`` names each table or check that differs."""

    def __init__(self, differences: list[str], target: str) -> None:
        super().__init__(f"the copy differs from the SQLite database; nothing was written to {target}")
        self.differences = differences


@dataclass(frozen=True)
class Copied:
    """What was copied and checked, for the command's one line."""

    source: Path
    target: str
    rows: dict[str, int]
    live_leases: int
    findings: int
    secret_from: str
    seconds: float

    def line(self) -> str:
        r = self.rows
        checked = (
            "all invariants hold"
            if not self.findings
            else f"check finds the same {count(self.findings, 'finding')} in both, and none new"
        )
        return (
            f"Copied {count(r['estates'], 'estate')}, {count(self.live_leases, 'live lease')}, "
            f"{count(r['events'], 'event')} and {count(r['key_material'], 'key')} "
            f"({sum(r.values()):,} rows in {len(r)} tables) from {self.source} into {self.target} "
            f"in {self.seconds:.1f} s: every row matches, {checked}. Start the PostgreSQL replicas "
            f"with this deployment's secret key, {self.secret_from}."
        )


def describe(url: str) -> str:
    """Where a PostgreSQL URL points, never its password: ``HOST:PORT/DB``."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


def check_url(url: str) -> None:
    parts = urlsplit(url)
    database = parts.path.removeprefix("/")
    if parts.scheme not in ("postgres", "postgresql") or not database or "/" in database:
        raise CopyError("--to must be a PostgreSQL URL: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB", exit_code=2)


def find_secret(cfg: Config) -> tuple[SecretKey, str]:
    """The deployment's secret key as the SQLite broker found it, and how to name it to the
    operator; ``CopyError`` (exit 2) when there is none."""
    default = cfg.data_dir / secretkey.FILE_NAME
    if cfg.secret_key is None and cfg.secret_key_file is None and not default.exists():
        raise CopyError(
            f"no secret key: the SQLite broker's is {default}, which does not exist, and neither "
            "TENURE_SECRET_KEY (setting 'secret_key') nor 'secret_key_file' is set. Give the one the "
            "SQLite broker was started with: the PostgreSQL replicas need it to open the copied keys; "
            "nothing was copied",
            exit_code=2,
        )
    try:
        secret = secretkey.resolve(cfg, may_generate=False)
    except secretkey.SecretKeyError as exc:
        raise CopyError(f"{exc}; nothing was copied", exit_code=2) from exc
    if cfg.secret_key is not None:
        named = "the one given in TENURE_SECRET_KEY (setting 'secret_key'): give it to them the same way"
    else:
        path = (cfg.secret_key_file or default).resolve()
        named = f'the one in {path}: give them TENURE_SECRET_KEY=$(cat {path}) or secret_key_file = "{path}"'
    return secret, named


def _open_keys(secret: SecretKey, rows: Sequence[dict[str, Any]], where: str) -> None:
    try:
        keymaterial.open_all(secret, rows)
    except KeySealed as exc:
        raise CopyError(
            f"the secret key from {secret.source} does not open the {exc} in {where}: it is not the "
            "secret key the SQLite broker sealed its keys under. Give the one it was started with "
            "(TENURE_SECRET_KEY, 'secret_key_file', or its data directory's secret-key); nothing was copied",
            exit_code=2,
        ) from exc


# -- the source ----------------------------------------------------------------------


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite database, held exclusively until closed; ``CopyError`` if a broker or
    another process has it open, or if it is not at this broker's schema."""
    if not path.is_file():
        raise CopyError(f"there is no broker database at {path}", exit_code=2)
    conn = sqlite3.connect(path, isolation_level=None, timeout=SOURCE_WAIT_SECONDS, check_same_thread=False)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # before the first read: see the docstring
        conn.execute("PRAGMA query_only = 1")
        conn.execute("BEGIN")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError as exc:
        conn.close()
        if (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise CopyError(
                f"{path} is in use by another process: stop the SQLite broker (and any tenure-broker "
                "check, backup or keys rotate on it) first; nothing was copied"
            ) from exc
        raise CopyError(f"cannot read {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CopyError(f"{path} is not a Tenure database: {exc}", exit_code=2) from exc
    newest = max(v for v, _, _ in sqlite_store.migrations())
    if version != newest:
        conn.close()
        if version > newest:
            why = f"is at schema {version}; this broker knows up to {newest}: upgrade the broker"
        else:
            why = (
                f"is at schema {version}, this broker's is {newest}: start this broker's version on it once "
                "(it upgrades the database in place), stop it, and copy again"
            )
        raise CopyError(f"{path} {why}; nothing was copied", exit_code=2)
    return conn


def _source_tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {name for (name,) in rows}


def _source_columns(conn: sqlite3.Connection, table: Table) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table.name})")]


def _source_select(table: Table, columns: Sequence[str]) -> str:
    """The source's rows, in the PostgreSQL table's column order and the canonical order."""
    picked = ", ".join("rowid" if c == table.rowid_as else c for c in columns)
    return f"SELECT {picked} FROM {table.name} ORDER BY {', '.join(table.key)}"  # noqa: S608 (names of ours)


def _rows(cursor: Any) -> Iterator[tuple[Any, ...]]:
    while batch := cursor.fetchmany(FETCH_ROWS):
        yield from batch


# -- comparing -----------------------------------------------------------------------


def canonical(value: Any) -> tuple[str, Any]:
    """A value as both databases' drivers give it back, tagged by kind, to name the first
    column that differs in two rows found unequal (SQLite is loosely typed: a text in a
    BLOB column must not pass for the bytes PostgreSQL made of it)."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("int", int(value))
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("real", value)
    if isinstance(value, str):
        return ("text", value)
    if isinstance(value, bytes | bytearray | memoryview):
        return ("blob", bytes(value))
    return (type(value).__name__, repr(value))


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes x'{bytes(value)[:8].hex()}…'"
    return repr(value)


def compare(
    table: Table, columns: Sequence[str], source: Iterator[tuple[Any, ...]], copy: Iterator[tuple[Any, ...]]
) -> tuple[int, str | None]:
    """Walk both tables in primary-key order; (rows in the source, the first difference)."""
    keys = [columns.index(k) for k in table.key]
    seen = copied = 0
    first: str | None = None
    for a in source:
        seen += 1
        b = next(copy, None)
        if b is not None:
            copied += 1
        if first is not None or a == b:  # equal values: text never equals bytes, nor a number text
            continue
        where = f"table {table.name}, row {'/'.join(str(a[i]) for i in keys)}"
        if b is None:
            first = f"{where}: missing from the copy"
            continue
        for name, x, y in zip(columns, a, b, strict=True):
            if canonical(x) != canonical(y):
                first = f"{where}: {name} is {_show(x)} in SQLite, {_show(y)} in the copy"
                break
    copied += sum(1 for _ in copy)
    if seen != copied:
        counted = f"table {table.name}: {seen:,} rows in SQLite, {copied:,} in the copy"
        first = counted if first is None else f"{counted}; first, {first}"
    return seen, first


def _findings(report: books.Report) -> Counter[str]:
    return Counter(report.findings)


# -- the copy ------------------------------------------------------------------------


def copy_store(cfg: Config, url: str) -> Copied:
    """Copy the SQLite database of ``cfg``'s data directory into the empty PostgreSQL
    database ``url``, verified; ``CopyError`` (nothing written) otherwise."""
    check_url(url)
    if not cfg.db_path.is_file():
        raise CopyError(f"there is no broker database at {cfg.db_path}", exit_code=2)
    started = time.monotonic()
    secret, secret_from = find_secret(cfg)
    try:
        from broker.store import postgres
    except ImportError as exc:
        raise CopyError(
            f"--to names PostgreSQL, but its driver is not installed ({exc.name}): pip install 'tenure[postgres]'",
            exit_code=2,
        ) from exc
    owner = folder_owner(cfg.data_dir)
    source = open_source(cfg.db_path)
    try:
        found = keyfiles.load(cfg.data_dir)
        if found:
            raise CopyError(
                f"{cfg.data_dir} still holds key files of the old layout (keys/, code-key), not yet in the "
                "database: start the SQLite broker once (it imports them), stop it, and copy again",
                exit_code=2,
            )
        tables = _source_tables(source)
        known = {t.name for t in TABLES} | NOT_COPIED
        if tables != known:
            raise CopyError(
                f"{cfg.db_path} has tables this copy-store does not know how to copy "
                f"({', '.join(sorted(tables ^ known))}); nothing was copied",
                exit_code=2,
            )
        src_tx = sqlite_store.SqliteTx(source, sqlite_store.load_queries(), new_id)
        _open_keys(secret, keymaterial.all_rows(src_tx), str(cfg.db_path))
        _migrate(postgres, url)
        return _copy(cfg, url, source, secret, secret_from, started)
    finally:
        source.close()
        if owner is not None:  # run as root: the broker's user must still open its database
            secretfiles.give_database_files(cfg.db_path, owner)


def _migrate(postgres: Any, url: str) -> None:
    from broker.errors import StorageUnavailable
    from broker.store.base import SchemaTooNew

    async def opened() -> None:
        store = await postgres.PostgresStore.open(url, pool_size=1)
        await store.close()

    try:
        asyncio.run(opened())
    except StorageUnavailable as exc:
        raise CopyError(f"{exc}; nothing was copied") from exc
    except SchemaTooNew as exc:
        raise CopyError(f"{describe(url)}: {exc}; nothing was copied", exit_code=2) from exc


def _copy(
    cfg: Config, url: str, source: sqlite3.Connection, secret: SecretKey, secret_from: str, started: float
) -> Copied:
    import psycopg
    from psycopg import sql

    from broker.store import postgres

    target = describe(url)
    now = time.time()
    try:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(TARGET_LOCK_TIMEOUT)))
            names = sql.SQL(", ").join(sql.Identifier(t.name) for t in TABLES)
            conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(names))
            _refuse_unless_empty(conn, target)
            columns = {t.name: _columns(conn, source, t) for t in TABLES}
            for table in TABLES:
                _fill(conn, source, table, columns[table.name])
            _set_sequences(conn, source)
            rows, differences = _verify(conn, source, columns)
            pg_tx = postgres.PostgresTx(conn, postgres.load_queries(), new_id)
            src_tx = sqlite_store.SqliteTx(source, sqlite_store.load_queries(), new_id)
            try:
                _open_keys(secret, keymaterial.all_rows(pg_tx), f"the copy at {target}")
            except CopyError as exc:
                differences.append(str(exc))
            was, now_found = books.check(src_tx, now), books.check(pg_tx, now)
            new = _findings(now_found) - _findings(was)
            differences += [f"check finds in the copy only: {line}" for line in new.elements()]
            if differences:
                raise CopyDiffers(differences, target)
    except psycopg.errors.LockNotAvailable as exc:
        raise CopyError(
            f"{target} is busy: is a broker running on it? Stop every replica while copying; nothing was copied"
        ) from exc
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()
        raise CopyError(
            f"{target} refused the copy: {first[0] if first else type(exc).__name__}; nothing was copied"
        ) from exc
    live = _scalar(source, "SELECT COUNT(*) FROM leases WHERE state = 'active'")
    return Copied(cfg.db_path.resolve(), target, rows, live, len(was.findings), secret_from, time.monotonic() - started)


def _scalar(source: sqlite3.Connection, query: str) -> int:
    (n,) = source.execute(query).fetchone()
    return int(n)


def _refuse_unless_empty(conn: Any, target: str) -> None:
    from psycopg import sql

    held = []
    for table in TABLES:
        (n,) = conn.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table.name))).fetchone()
        if n:
            held.append(f"{n:,} in {table.name}")
    if held:
        raise CopyError(
            f"{target} is not empty (it holds rows: {', '.join(held)}): copy-store copies into an empty "
            "database only; make a new one (createdb) and copy again. Nothing was changed"
        )


def _columns(conn: Any, source: sqlite3.Connection, table: Table) -> list[str]:
    """The PostgreSQL table's columns, which must be the SQLite table's (plus ``rowid_as``)."""
    found = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
        (table.name,),
    ).fetchall()
    columns = [name for (name,) in found]
    expected = set(_source_columns(source, table)) | ({table.rowid_as} if table.rowid_as else set())
    if set(columns) != expected:
        raise CopyError(
            f"table {table.name} has other columns in PostgreSQL ({', '.join(columns)}) than in SQLite "
            f"({', '.join(sorted(expected))}); nothing was copied",
            exit_code=2,
        )
    return columns


def _fill(conn: Any, source: sqlite3.Connection, table: Table, columns: Sequence[str]) -> None:
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in _rows(source.execute(_source_select(table, columns))):
            copy.write_row(row)


def _set_sequences(conn: Any, source: sqlite3.Connection) -> None:
    """Each identity's next value past every id copied (and past SQLite's AUTOINCREMENT
    high-water mark where a table has one: an id once used is never handed out again;
    ``events`` has none since migration 0011, and the broker never deletes an event)."""
    from psycopg import sql

    marks = dict(source.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    for table in TABLES:
        if table.identity is None:
            continue
        (top,) = conn.execute(
            sql.SQL("SELECT COALESCE(MAX({}), 0) FROM {}").format(
                sql.Identifier(table.identity), sql.Identifier(table.name)
            )
        ).fetchone()
        following = max(int(top), int(marks.get(table.name) or 0)) + 1
        conn.execute(
            "SELECT setval(pg_get_serial_sequence(%s, %s), %s, false)", (table.name, table.identity, following)
        )


def _verify(conn: Any, source: sqlite3.Connection, columns: dict[str, list[str]]) -> tuple[dict[str, int], list[str]]:
    """Every table compared row by row, in the copy's own transaction."""
    from psycopg import sql

    types = dict(
        conn.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        ).fetchall()
    )
    rows: dict[str, int] = {}
    differences = []
    for table in TABLES:
        cols = columns[table.name]
        order = sql.SQL(", ").join(
            sql.SQL('{} COLLATE "C"' if types[f"{table.name}.{k}"] == "text" else "{}").format(sql.Identifier(k))
            for k in table.key
        )
        query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in cols), sql.Identifier(table.name), order
        )
        with conn.cursor(name=f"verify_{table.name}") as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(query)
            n, differs = compare(table, cols, _rows(source.execute(_source_select(table, cols))), iter(cur))
        rows[table.name] = n
        if differs is not None:
            differences.append(differs)
    return rows, differences
