"""Lease-signing keys: where they come from at start, rotation, and publication.

The keys live in the database, sealed under the deployment's secret key
(``broker/keymaterial.py``); the newest signs. ``tenure-broker keys rotate`` adds one
through the same database, and every running broker picks it up at its next reload
(``key_reload_seconds``). An older key stays published in the JWKS until every token it
can have signed has expired: its successor's creation, plus the longest lease lifetime,
plus the reload interval and a margin.

At start, ``unlock`` finds the secret key, refuses one that does not open the stored
keys (a restored backup started with another deployment's secret key must not quietly
make new keys), and imports the key files of the old data-directory layout once
(``broker/keyfiles.py``).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from broker import keyfiles, keymaterial, secretkey
from broker.config import Config
from broker.keymaterial import StoredKey
from broker.push import events as push
from broker.secretkey import KeySealed, SecretKey, SecretKeyError
from broker.store.base import Store, Tx
from shared import jws

log = logging.getLogger("tenure.keys")
MAX_LEASE_SECONDS = 30 * 86400
KeyFileError = keyfiles.KeyFileError


async def unlock(config: Config, store: Store, *, may_generate_secret: bool) -> SecretKey:
    """The secret key, checked against every stored key; old key files imported.

    ``may_generate_secret``: whether this store keeps a generated secret key in the data
    directory (the embedded SQLite store does; a database shared by replicas does not).
    Raises ``SecretKeyError`` (the operator's mistake: exit 2) or ``KeyFileError``.
    """
    rows = await store.read(keymaterial.all_rows)
    secret = await asyncio.to_thread(secretkey.resolve, config, may_generate=may_generate_secret and not rows)
    try:
        keymaterial.open_all(secret, rows)
    except KeySealed as exc:
        raise SecretKeyError(
            f"the secret key from {secret.source} does not open the {exc} stored in the database: "
            "it is not the secret key this data was sealed under. Start the broker with the "
            "deployment's secret key (TENURE_SECRET_KEY, 'secret_key_file', or the old data "
            "directory's secret-key copied beside the database); nothing was changed"
        ) from exc
    found = await asyncio.to_thread(keyfiles.load, config.data_dir)
    if found:
        added = await store.write(partial(keymaterial.import_files, secret=secret, found=found))
        await asyncio.to_thread(keyfiles.set_aside, config.data_dir, found)
        log.info(
            "imported %d key(s) from the data directory's key files into the database, sealed; "
            "the files are now in %s and %s, to delete once this broker serves",
            added,
            keyfiles.KEYS + keyfiles.ASIDE,
            keyfiles.CODE_KEY + keyfiles.ASIDE,
        )
    return secret


async def start(config: Config, store: Store, now: float, *, may_generate_secret: bool) -> tuple[Keyring, bytes]:
    """The keyring and the code HMAC key for a starting broker, made on first start."""
    secret = await unlock(config, store, may_generate_secret=may_generate_secret)
    code_key = await store.write(partial(keymaterial.ensure_code_key, secret=secret))
    keyring = Keyring(store, secret, config.key_reload_seconds)
    await keyring.reload(now)
    return keyring, code_key


async def rotate(store: Store, secret: SecretKey, now: float) -> jws.SigningKey:
    """Add a new signing key for the whole deployment; it becomes the one that signs."""

    def add(tx: Tx) -> StoredKey:
        stored = keymaterial.add_signing_key(tx, secret, now)
        push.record_keys_rotated(tx, now, stored.key.kid)  # agents fetch the keys at once
        return stored

    stored = await store.write(add)
    log.info("new lease-signing key %s", stored.key.kid)
    return stored.key


class Keyring:
    """The signing key in force and the public keys to publish, re-read from the store."""

    def __init__(self, store: Store, secret: SecretKey, reload_seconds: float) -> None:
        self._store = store
        self._secret = secret
        self.reload_seconds = reload_seconds
        self._opened: dict[tuple[str, int], StoredKey] = {}
        self._keys: list[StoredKey] = []
        self._jwks: dict[str, Any] = {"keys": []}

    @property
    def keys(self) -> list[StoredKey]:
        """The keys in force, oldest first."""
        return list(self._keys)

    async def reload(self, now: float) -> None:
        """Re-read the stored keys. One that does not open is logged and left out, so
        that the others, and later rotations, are still used."""
        rows = await self._store.read(keymaterial.signing_rows)
        if not rows:
            await self._store.write(partial(keymaterial.ensure_signing_key, secret=self._secret, now=now))
            rows = await self._store.read(keymaterial.signing_rows)
        keys = []
        for row in rows:
            try:
                keys.append(self._open(row))
            except KeySealed as exc:
                log.error("cannot open the %s: it was sealed under another secret key, or altered", exc)
        if not keys:
            return  # keep signing with the keys in force
        if self._keys and [k.key.kid for k in keys] != [k.key.kid for k in self._keys]:
            log.info("signing with key %s", keys[-1].key.kid)
        self._keys = keys
        self._publish(now)

    def _open(self, row: dict[str, Any]) -> StoredKey:
        # A stored key never changes: open each once, not at every reload.
        ident = (str(row["kid"]), int(row["created"]))
        found = self._opened.get(ident)
        if found is None:
            found = self._opened[ident] = keymaterial.open_signing_key(self._secret, row)
        return found

    def _publish(self, now: float) -> None:
        keep = MAX_LEASE_SECONDS + self.reload_seconds + 120
        published = []
        for older, newer in zip(self._keys, self._keys[1:], strict=False):
            if now < newer.created + keep:
                published.append(jws.jwk(older.key.private.public_key()))
        published.append(jws.jwk(self._keys[-1].key.private.public_key()))
        self._jwks = {"keys": published}

    @property
    def secret(self) -> SecretKey:
        """The deployment's secret key, which also seals webhook secrets (broker/webhooks/)."""
        return self._secret

    @property
    def current(self) -> jws.SigningKey:
        return self._keys[-1].key

    def jwks(self, now: float) -> dict[str, Any]:
        self._publish(now)
        return self._jwks
