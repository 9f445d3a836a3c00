"""Lease-signing keys in ``DATA_DIR/keys``: generation, rotation and publication.

Key files are named ``key-<created epoch>-<kid prefix>.pem`` (mode 0600); the newest
signs. ``tenure-broker keys rotate`` adds a file and a running broker picks it up at its
next reload (``key_reload_seconds``). An older key stays published in the JWKS until
every token it can have signed has expired: its successor's creation, plus the
longest lease lifetime, plus the reload interval and a margin.

``rotate`` run as root (an operator's habit) gives the new file to the data directory's
owner, the broker's user: a key file the broker cannot read would otherwise fail every
reload and stop the next start. One it meets anyway is named, with its owner, in a
``KeyFileError``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm

from shared import jws
from shared.secretfile import folder_owner, write_secret

log = logging.getLogger("tenure.keys")
MAX_LEASE_SECONDS = 30 * 86400
_FILE = re.compile(r"^key-(\d+)-[A-Za-z0-9_-]+\.pem$")


class KeyFileError(ValueError):
    """A key file or the key directory cannot be read or used; the message names it."""


@dataclass(frozen=True)
class StoredKey:
    created: int
    key: jws.SigningKey


def rotate(data_dir: Path, now: float) -> jws.SigningKey:
    """Add a new signing key; it becomes the one that signs."""
    folder = data_dir / "keys"
    owner = folder_owner(data_dir)
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
        if owner is not None:
            os.chown(folder, *owner)
    existing = load(data_dir)
    created = max([int(now)] + [k.created + 1 for k in existing])
    key = jws.SigningKey.generate()
    write_secret(folder / f"key-{created}-{key.kid[:12]}.pem", key.to_pem(), owner=owner)
    log.info("new lease-signing key %s", key.kid)
    return key


def load(data_dir: Path) -> list[StoredKey]:
    """All stored keys, oldest first; ``KeyFileError`` names a file that cannot be used."""
    folder = data_dir / "keys"
    if not folder.is_dir():
        return []
    found = []
    try:
        names = sorted(folder.iterdir())
    except OSError as exc:
        raise _unreadable(folder, exc) from exc
    for path in names:
        match = _FILE.match(path.name)
        if match:
            try:
                key = jws.SigningKey.from_pem(path.read_bytes())
            except OSError as exc:
                raise _unreadable(path, exc) from exc
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                # TypeError: a passphrase-protected key. Name the file, whatever the cause.
                raise KeyFileError(f"{path} is not a usable Ed25519 private key: {exc}") from exc
            found.append(StoredKey(int(match.group(1)), key))
    found.sort(key=lambda k: (k.created, k.key.kid))
    return found


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


class Keyring:
    """The signing key in force and the public keys to publish."""

    def __init__(self, data_dir: Path, reload_seconds: float) -> None:
        self.data_dir = data_dir
        self.reload_seconds = reload_seconds
        self._keys: list[StoredKey] = []
        self._jwks: dict[str, Any] = {"keys": []}

    def reload(self, now: float) -> None:
        keys = load(self.data_dir)
        if not keys:
            rotate(self.data_dir, now)
            keys = load(self.data_dir)
        if [k.key.kid for k in keys] != [k.key.kid for k in self._keys] and self._keys:
            log.info("signing with key %s", keys[-1].key.kid)
        self._keys = keys
        self._publish(now)

    def _publish(self, now: float) -> None:
        keep = MAX_LEASE_SECONDS + self.reload_seconds + 120
        published = []
        for older, newer in zip(self._keys, self._keys[1:], strict=False):
            if now < newer.created + keep:
                published.append(jws.jwk(older.key.private.public_key()))
        published.append(jws.jwk(self._keys[-1].key.private.public_key()))
        self._jwks = {"keys": published}

    @property
    def current(self) -> jws.SigningKey:
        return self._keys[-1].key

    def jwks(self, now: float) -> dict[str, Any]:
        self._publish(now)
        return self._jwks
