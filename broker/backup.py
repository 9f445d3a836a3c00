"""``tenure-broker backup`` and ``restore``: a consistent copy of a live SQLite broker.

The copy is taken with SQLite's online backup API in one step: the
source connection holds a single read snapshot for the whole copy, so the file is
consistent to one instant, and under WAL the broker's writer is never blocked by it. The
copy is one self-contained file (journal mode DELETE, no ``-wal`` beside it), written
mode 0600 because it holds the books and the hashes of every token.

What the database does not hold today — the lease-signing keys (``DATA_DIR/keys``), the
code key (``DATA_DIR/code-key``) and the operator token — is not in the backup; the
operator keeps those apart (docs/operations.md says how).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from broker.store.sqlite import migrations


class BackupError(Exception):
    """The copy could not be made or used; the message says why in the operator's words."""


@dataclass(frozen=True)
class Copied:
    path: Path
    schema_version: int
    estates: int
    live_leases: int
    size: int


def _create_private(path: Path) -> None:
    """Create ``path`` empty, mode 0600; refuse to follow a link or replace a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} exists already; name a new file (nothing was overwritten)") from None
    except OSError as exc:
        raise BackupError(f"cannot create {path}: {exc.strerror}") from exc
    os.close(fd)


def _describe(conn: sqlite3.Connection, path: Path) -> Copied:
    """Check a copy and say what it holds; raise ``BackupError`` if it is not a sound Tenure database."""
    try:
        (check,) = conn.execute("PRAGMA integrity_check").fetchone() or ("no answer",)
        if check != "ok":
            raise BackupError(f"{path} fails SQLite's integrity check: {check}")
        (version,) = conn.execute("PRAGMA user_version").fetchone() or (0,)
        known = max(v for v, _, _ in migrations())
        if not 1 <= version <= known:
            raise BackupError(
                f"{path} is not a Tenure database this broker knows "
                f"(schema version {version}; this broker knows 1 to {known})"
            )
        (estates,) = conn.execute("SELECT COUNT(*) FROM estates").fetchone() or (0,)
        (leases,) = conn.execute("SELECT COUNT(*) FROM leases WHERE state = 'active'").fetchone() or (0,)
    except sqlite3.Error as exc:
        raise BackupError(f"{path} is not a Tenure database: {exc}") from exc
    return Copied(path, int(version), int(estates), int(leases), path.stat().st_size)


def _copy(source: Path, target: Path, journal_mode: str) -> Copied:
    """Copy ``source`` into the new file ``target`` in one backup step, then check the copy."""
    _create_private(target)
    src = dst = None
    try:
        src = sqlite3.connect(source, timeout=10)
        src.execute("PRAGMA query_only = 1")  # a backup never writes its source
        dst = sqlite3.connect(target)
        src.backup(dst)  # pages=-1: the whole file from one read snapshot
        dst.execute(f"PRAGMA journal_mode = {journal_mode}")
        return _describe(dst, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            target.unlink()
        if isinstance(exc, sqlite3.Error):
            raise BackupError(f"cannot copy {source}: {exc}") from exc
        raise
    finally:
        for conn in (dst, src):
            if conn is not None:
                conn.close()


def backup(source: Path, target: Path) -> Copied:
    """A consistent online copy of the broker's database ``source`` into the new file ``target``."""
    if not source.is_file():
        raise BackupError(f"there is no broker database at {source}")
    return _copy(source, target, "DELETE")


def restore(backup_file: Path, target: Path) -> Copied:
    """Make a new data directory holding ``target`` from a backup; never writes over anything."""
    if not backup_file.is_file():
        raise BackupError(f"there is no backup file at {backup_file}")
    conn = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
    try:
        _describe(conn, backup_file)  # refuse a damaged or foreign file before making anything
    finally:
        conn.close()
    data_dir = target.parent
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty; restore into a new data directory (nothing was overwritten)")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _copy(backup_file, target, "WAL")
