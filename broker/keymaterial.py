"""Key material in the database, sealed: plain functions of ``(tx, secret, …)``, no SQL.

Two purposes share the ``key_material`` rows: ``signing`` (the Ed25519 lease-signing
keys, by kid; the newest ``created`` signs) and ``code`` (the one HMAC key under which
authentication codes are stored). Each row's secret is sealed by ``SecretKey.seal``
for that very row, so the database holds no key in clear and a row cannot be swapped.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.keyfiles import Found, KeyFileError
from broker.secretkey import SecretKey
from broker.store.base import Row, Tx
from shared import jws

SIGNING, CODE = "signing", "code"
CODE_KID = "code"
CODE_KEY_BYTES = 32


@dataclass(frozen=True)
class StoredKey:
    created: int
    key: jws.SigningKey


def all_rows(tx: Tx) -> list[Row]:
    """Every sealed row (to check at start that the secret key opens them)."""
    return tx.all("key_material_all")


def signing_rows(tx: Tx) -> list[Row]:
    """The sealed signing keys, oldest first."""
    return tx.all("signing_keys")


def open_row(secret: SecretKey, purpose: str, row: Row) -> bytes:
    """The secret of ``row``; ``KeySealed`` if ``secret`` did not seal it there."""
    return secret.open(purpose, row["kid"], int(row["created"]), bytes(row["sealed"]))


def open_all(secret: SecretKey, rows: Iterable[Row]) -> None:
    """Check that ``secret`` opens every stored key of ``rows``; ``KeySealed`` names the first that it does not."""
    for row in rows:
        open_row(secret, row["purpose"], row)


def open_signing_key(secret: SecretKey, row: Row) -> StoredKey:
    private = Ed25519PrivateKey.from_private_bytes(open_row(secret, SIGNING, row))
    return StoredKey(int(row["created"]), jws.SigningKey(jws.key_id(private.public_key()), private))


def add_signing_key(tx: Tx, secret: SecretKey, now: float, key: jws.SigningKey | None = None) -> StoredKey:
    """Store a new signing key (or ``key``), created after every other: it becomes the one that signs."""
    newest = tx.scalar("newest_signing_key_created")
    created = int(now) if newest is None else max(int(now), int(newest) + 1)
    key = key or jws.SigningKey.generate()
    _insert(tx, secret, SIGNING, key.kid, created, key.private.private_bytes_raw())
    return StoredKey(created, key)


def ensure_signing_key(tx: Tx, secret: SecretKey, now: float) -> None:
    """Make the first signing key, unless there is one."""
    if tx.scalar("newest_signing_key_created") is None:
        add_signing_key(tx, secret, now)


def ensure_code_key(tx: Tx, secret: SecretKey) -> bytes:
    """The code HMAC key, made (32 random bytes) unless there is one."""
    row = tx.one("code_key")
    if row is not None:
        return open_row(secret, CODE, row)
    raw = secrets.token_bytes(CODE_KEY_BYTES)
    if _insert(tx, secret, CODE, CODE_KID, 0, raw):
        return raw
    return ensure_code_key(tx, secret)  # another replica made it meanwhile: use that one


def import_files(tx: Tx, secret: SecretKey, found: Found) -> int:
    """Store the keys of the old file layout, keeping their kids and creation times; a key
    already stored is left as it is. Returns how many were added.

    A code key in the database that differs from ``found``'s is refused with a
    ``KeyFileError``: which one the outstanding codes were made under cannot be told.
    """
    added = 0
    for item in found.signing:
        raw = item.key.private.private_bytes_raw()
        added += _insert(tx, secret, SIGNING, item.key.kid, item.created, raw)
    if found.code_key is not None:
        row = tx.one("code_key")
        if row is None:
            added += _insert(tx, secret, CODE, CODE_KID, 0, found.code_key)
        elif not secrets.compare_digest(open_row(secret, CODE, row), found.code_key):
            raise KeyFileError(
                "the data directory's code-key differs from the code key in the database; "
                "move one of them away (codes made under it will no longer redeem) and start again"
            )
    return added


def _insert(tx: Tx, secret: SecretKey, purpose: str, kid: str, created: int, raw: bytes) -> int:
    sealed = secret.seal(purpose, kid, created, raw)
    return tx.run("insert_key_material", purpose=purpose, kid=kid, created=created, sealed=sealed)
