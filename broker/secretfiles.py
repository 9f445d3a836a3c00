"""Secrets kept as files in the data directory, outside the database."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from broker.ids import new_token
from shared.secretfile import write_secret

log = logging.getLogger("tenure.broker")


DIR_MODE = 0o700
FILE_MODE = 0o600
DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""The database file and the files SQLite keeps beside it: each holds the whole books."""


def prepare_data_dir(data_dir: Path, db_path: Path) -> None:
    """Make the data directory 0700 and the database file 0600, or tighten existing ones.

    ``mkdir`` leaves an existing directory as it is, and SQLite creates its files with the
    umask's mode (commonly 0644): the database holds token hashes, code MACs and the audit
    log, for no other user to read. SQLite gives its -wal and -shm files the mode of the
    database file, so the database is created 0600 before SQLite first opens it. Each mode
    changed is logged as a warning: someone loosened it, or an older broker made it.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(data_dir, DIR_MODE)
    try:
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass  # opened by SQLite as it is (an unwritable file is the store's 503, not ours)
    secure_database_files(db_path)


def secure_database_files(db_path: Path) -> None:
    """Set the database file and any WAL, shared-memory or journal file beside it to 0600."""
    for suffix in DATABASE_SUFFIXES:
        path = db_path.with_name(db_path.name + suffix)
        try:
            _tighten(path, FILE_MODE)
        except FileNotFoundError:
            pass  # -wal, -shm and -journal come and go with SQLite's connections


def give_database_files(db_path: Path, owner: tuple[int, int]) -> None:
    """Give the database and the files beside it to ``owner`` (uid, gid): a command run as
    root must not leave the broker's user a database it cannot open."""
    for suffix in DATABASE_SUFFIXES:
        try:
            os.chown(db_path.with_name(db_path.name + suffix), *owner)
        except FileNotFoundError:
            pass


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        try:
            path.chmod(current & mode)
        except PermissionError as exc:  # another owner's file, or an immutable one
            log.warning("%s is mode %04o and cannot be set to %04o: %s", path, current, current & mode, exc.strerror)
            return
        log.warning("%s was mode %04o; set it to %04o (no other user may read it)", path, current, current & mode)


class OperatorTokenMissing(Exception):
    """A database with estates and no operator token to go with it (exit 2)."""


def operator_token_exists(data_dir: Path) -> bool:
    path = data_dir / "operator-token"
    return path.exists() and bool(path.read_text().strip())


def operator_token(data_dir: Path, configured: str | None) -> str:
    """The operator token: as configured, else generated once into DATA_DIR/operator-token."""
    if configured:
        return configured
    path = data_dir / "operator-token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = new_token("op")
    write_secret(path, (token + "\n").encode())
    log.info("generated the operator token into %s (mode 0600); move it into a secret store", path)
    return token
