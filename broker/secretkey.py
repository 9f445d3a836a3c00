"""The deployment's secret key, and the sealing of key material under it.

The secret key is 32 random bytes, written as base64. It comes from ``secret_key``
(``TENURE_SECRET_KEY``) or from the file named by ``secret_key_file``; with neither, the
embedded SQLite broker keeps one in ``DATA_DIR/secret-key`` (mode 0600), generated on
first start as the operator token is. It never reaches the database or a log line.

Key material (the lease-signing keys, the code HMAC key) is stored in the database only
sealed: AES-256-GCM under a key derived from the secret key with HKDF-SHA256 and a
purpose label, with associated data naming the row's purpose, id and creation time, so
that a sealed value moved to another row, or a row whose ``created`` was edited (which
would change the key that signs), no longer opens.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.config import Config
from shared.secretfile import folder_owner, write_secret

log = logging.getLogger("tenure.broker")
KEY_BYTES = 32
NONCE_BYTES = 12
FILE_NAME = "secret-key"


class SecretKeyError(Exception):
    """No usable secret key: the message names the setting or file and what to do."""


class KeySealed(Exception):
    """A sealed value does not open under this secret key (another key's, or tampered)."""


def decode(text: str, where: str) -> bytes:
    """The 32 bytes that ``text`` spells in base64; ``SecretKeyError`` naming ``where`` if not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise SecretKeyError(
            f"{where} must be {KEY_BYTES} random bytes in base64 (44 characters, e.g. from "
            "`head -c 32 /dev/urandom | base64`)"
        )
    return raw


def generate() -> str:
    """A new secret key, as base64."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


class SecretKey:
    """The secret key and where it came from; seals and opens key material under it."""

    def __init__(self, raw: bytes, source: str) -> None:
        self._raw = raw
        self.source = source
        self._derived: dict[str, AESGCM] = {}

    def __repr__(self) -> str:
        return f"SecretKey(source={self.source!r}, key=***)"

    def _aead(self, purpose: str) -> AESGCM:
        aead = self._derived.get(purpose)
        if aead is None:
            label = b"tenure key material v1: " + purpose.encode()
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label)
            aead = self._derived[purpose] = AESGCM(hkdf.derive(self._raw))
        return aead

    @staticmethod
    def _bound(purpose: str, kid: str, created: int) -> bytes:
        return f"tenure key_material v1\0{purpose}\0{kid}\0{created:d}".encode()

    def seal(self, purpose: str, kid: str, created: int, secret: bytes) -> bytes:
        """``secret`` encrypted for the row (purpose, kid, created): nonce, then ciphertext."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead(purpose).encrypt(nonce, secret, self._bound(purpose, kid, created))

    def open(self, purpose: str, kid: str, created: int, sealed: bytes) -> bytes:
        """The secret sealed for this row; ``KeySealed`` if this key did not seal it there."""
        nonce, body = bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:])
        try:
            return self._aead(purpose).decrypt(nonce, body, self._bound(purpose, kid, created))
        except (InvalidTag, ValueError) as exc:
            raise KeySealed(f"{purpose} key {kid}") from exc


def resolve(config: Config, *, may_generate: bool) -> SecretKey:
    """The secret key from the settings, else from ``DATA_DIR/secret-key``.

    That file is generated when it is missing and ``may_generate`` is true: the caller
    passes false when the database already holds sealed keys (a new secret key would
    not open them) or when its store is shared by replicas, which must all be given the
    same key.
    """
    if config.secret_key is not None:
        return SecretKey(decode(config.secret_key, "setting 'secret_key'"), "setting 'secret_key'")
    if config.secret_key_file is not None:
        return _from_file(config.secret_key_file, "setting 'secret_key_file'")
    path = config.data_dir / FILE_NAME
    if path.exists():
        return _from_file(path, f"{path} (used when neither 'secret_key' nor 'secret_key_file' is set)")
    if not may_generate:
        raise SecretKeyError(
            "the database holds signing keys sealed under a secret key, and this broker was given "
            f"none: set TENURE_SECRET_KEY (setting 'secret_key') or 'secret_key_file', or copy the "
            f"old data directory's secret-key to {path}; a new secret key would not open them"
        )
    text = generate()
    write_secret(path, (text + "\n").encode(), owner=folder_owner(config.data_dir))
    log.info("generated the deployment's secret key into %s (mode 0600); keep a copy apart from backups", path)
    return SecretKey(decode(text, str(path)), str(path))


def _from_file(path: Path, where: str) -> SecretKey:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not base64 text"
        raise SecretKeyError(f"{where}: cannot read {path}: {reason}") from exc
    return SecretKey(decode(text, f"{where}: {path}"), where)
