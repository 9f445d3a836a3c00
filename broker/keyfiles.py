"""Key files of the old data-directory layout, imported into the database once.

Before key material moved into the database, a data directory held the lease-signing
keys as ``keys/key-<created epoch>-<kid prefix>.pem`` and the code HMAC key as
``code-key``. At start the broker reads any it finds, stores them sealed in one
transaction (``keymaterial.import_files``: a key already stored is skipped, so a second
import changes nothing), and only then moves the files aside, into ``keys.imported/``
and ``code-key.imported``, for the operator to delete once the broker serves. A crash
between the two steps leaves files that the next start imports again, to no effect.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm

from shared import jws

log = logging.getLogger("tenure.keys")
_FILE = re.compile(r"^key-(\d+)-[A-Za-z0-9_-]+\.pem$")
KEYS, CODE_KEY = "keys", "code-key"
ASIDE = ".imported"


class KeyFileError(ValueError):
    """A key file or the key directory cannot be read or used; the message names it."""


@dataclass(frozen=True)
class FoundKey:
    path: Path
    created: int
    key: jws.SigningKey


@dataclass
class Found:
    """What the old layout holds: signing keys, oldest first, and the code key."""

    signing: list[FoundKey] = field(default_factory=list)
    code_key: bytes | None = None

    def __bool__(self) -> bool:
        return bool(self.signing) or self.code_key is not None


def load(data_dir: Path) -> Found:
    """The key files in ``data_dir``; ``KeyFileError`` names one that cannot be used."""
    found = Found(signing=_signing_keys(data_dir / KEYS))
    code = data_dir / CODE_KEY
    if code.exists():
        try:
            data = code.read_bytes()
        except OSError as exc:
            raise _unreadable(code, exc) from exc
        if len(data) < 32:
            raise KeyFileError(f"{code} is damaged (shorter than 32 bytes)")
        found.code_key = data
    return found


def _signing_keys(folder: Path) -> list[FoundKey]:
    if not folder.is_dir():
        return []
    try:
        names = sorted(folder.iterdir())
    except OSError as exc:
        raise _unreadable(folder, exc) from exc
    found = []
    for path in names:
        match = _FILE.match(path.name)
        if not match:
            continue
        try:
            key = jws.SigningKey.from_pem(path.read_bytes())
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # TypeError: a passphrase-protected key. Name the file, whatever the cause.
            raise KeyFileError(f"{path} is not a usable Ed25519 private key: {exc}") from exc
        found.append(FoundKey(path, int(match.group(1)), key))
    found.sort(key=lambda k: (k.created, k.key.kid))
    return found


def set_aside(data_dir: Path, found: Found) -> None:
    """Move the imported files out of the way; each move is atomic, and all are idempotent."""
    if found.signing:
        aside = data_dir / (KEYS + ASIDE)
        aside.mkdir(mode=0o700, exist_ok=True)
        for item in found.signing:
            os.replace(item.path, aside / item.path.name)
        try:
            (data_dir / KEYS).rmdir()
        except OSError:
            log.warning("%s holds files that are not signing keys; left as they are", data_dir / KEYS)
    if found.code_key is not None:
        os.replace(data_dir / CODE_KEY, data_dir / (CODE_KEY + ASIDE))
    _fsync_dir(data_dir)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unreadable(path: Path, exc: OSError) -> KeyFileError:
    """Name the file, and whose it is against whom the broker runs as: "chown" is the fix."""
    try:
        info = path.stat()
        whose = f"; it belongs to uid {info.st_uid} and the broker runs as uid {os.geteuid()}"
        if info.st_uid != os.geteuid():
            whose += f" (give it to the broker's user: chown {os.geteuid()} {path})"
    except OSError:
        whose = ""
    what = "the signing-key directory" if path.is_dir() else "signing key"
    return KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}{whose}")
