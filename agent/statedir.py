"""The agent's state directory and the JSON documents kept in it.

The directory holds the server tokens and lease tokens, so it is kept mode 0700 and
every document in it is written with ``shared.secretfile.write_secret`` (mode 0600,
replaced atomically): a crash leaves either the old or the new file, never a torn one.
Each document carries ``"format": 1``; one of another format is refused, not guessed at.

The service runs as its own user (``tenure-agent``), but a technician may well run
``enroll`` as root. So, as root, everything written here is given to the state
directory's owner, and a directory created on the way to the owner of the directory it
is made in: the service never meets a binding it cannot read (docs/agent.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from agent.errors import StateError
from shared.secretfile import folder_owner, write_secret

FORMAT = 1


def ensure_dir(path: Path) -> None:
    """Create the state directory (mode 0700) if needed; raise ``StateError`` if unusable.

    As root, each directory created is given to the owner of the one it is made in.
    """
    missing = []
    existing = path
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = folder_owner(existing) if missing else None
        for folder in reversed(missing):
            if owner is not None:
                os.chown(folder, *owner)
    except OSError as exc:
        raise StateError(f"cannot create state directory {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(f"state directory {path} is not writable by this user")


def check_writable(path: Path) -> None:
    """Prove that a file can be written into ``path`` for its owner; ``StateError`` if not.

    ``enroll`` asks before it spends a code: as root, giving files to the state
    directory's owner can fail (a root-squashed network file system, a user namespace),
    and a code spent on a binding the service cannot read is a code lost.
    """
    probe = path / f".probe.{os.getpid()}.{os.urandom(4).hex()}"
    owner = None
    try:
        owner = folder_owner(path)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError as exc:
        whose = "" if owner is None else f" for its owner (uid {owner[0]})"
        raise StateError(f"cannot write into state directory {path}{whose}: {exc.strerror}") from exc


def encode_document(document: dict[str, Any]) -> bytes:
    """The bytes ``write_document`` writes for ``document``."""
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def write_document(path: Path, document: dict[str, Any]) -> None:
    """Replace the document at ``path``; raise ``StateError`` naming the file."""
    write_encoded(path, encode_document(document))


def write_encoded(path: Path, data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` from ``encode_document`` (fsync'd);
    raise ``StateError`` naming the file. Safe to call off the event loop."""
    try:
        write_secret(path, data, owner=folder_owner(path.parent))
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror}") from exc


def read_document(path: Path) -> dict[str, Any] | None:
    """The document at ``path``, None if there is none; ``StateError`` if it is unreadable."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise StateError(f"{path} is not valid JSON; move it away and enrol again") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError(f"{path} has an unknown format")
    return document
