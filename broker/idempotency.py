"""Idempotency-Key: a retried POST returns the first completed answer and changes nothing.

Records live 24 h, scoped to the caller's token. A stored answer can carry secrets (a
new admin's token, an authentication code), so it is encrypted with AES-GCM under a key
derived (HKDF) from the idempotency key and the caller's *raw* credential: the bearer
token, or the console's session id. The database holds neither (only their hashes), so a
copy of it, even with a guessable idempotency key such as ``paris-1``, decrypts nothing.
The record is found by a separate derivation from the idempotency key and the token's
hash. The record is written in the same transaction as the change.

A record that the caller's credential cannot decrypt (written before this scheme, or by
the same admin in another console session) is answered ``422 idempotency_key_reused``:
its request was done once, and doing it again could duplicate it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.errors import IdempotencyKeyReused, ValidationFailed
from broker.store.base import Tx

TTL_SECONDS = 86400
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class IdempotencyKey:
    lookup: bytes
    secret: bytes
    request_hash: bytes

    @classmethod
    def derive(cls, key: str, credential: str, scope: bytes, method: str, path: str, body: bytes) -> IdempotencyKey:
        """``credential`` is the caller's raw token or session id, ``scope`` its hash (as stored)."""
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise ValidationFailed([{"field": "Idempotency-Key", "message": "must be 1-255 printable characters"}])
        # The lookup is derived as it always was (HKDF's first 32 bytes do not depend on the
        # length asked for), so records written before the secret changed are still found.
        lookup = HKDF(hashes.SHA256(), 32, salt=scope, info=b"tenure-idempotency").derive(key.encode())
        secret = HKDF(hashes.SHA256(), 32, salt=scope, info=b"tenure-idempotency-answer").derive(
            credential.encode("utf-8", "surrogatepass") + b"\x00" + key.encode()
        )
        request = hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).digest()
        return cls(lookup, secret, request)


Answer = tuple[int, Any]


def run(tx: Tx, now: float, key: IdempotencyKey, fn: Callable[[], Answer]) -> Answer:
    """Replay the stored answer for ``key`` or run ``fn`` and store its answer."""
    row = tx.one("idempotency_get", key_hash=key.lookup)
    if row is not None and row["created_at"] + TTL_SECONDS > now:
        if row["request_hash"] != key.request_hash:
            raise IdempotencyKeyReused("This Idempotency-Key was used for a different request; use a new key.")
        try:
            body = AESGCM(key.secret).decrypt(row["nonce"], row["body"], key.lookup)
        except InvalidTag:
            raise IdempotencyKeyReused(
                "A request with this Idempotency-Key was already done, but its answer cannot be "
                "replayed to this credential (another console session, or a broker upgrade); "
                "check what it did, and use a new key."
            ) from None
        return int(row["status"]), json.loads(body) if body else None
    if row is not None:
        tx.run("idempotency_delete", key_hash=key.lookup)
    status, payload = fn()
    nonce = os.urandom(12)
    plain = b"" if payload is None else json.dumps(payload).encode()
    tx.run(
        "idempotency_put",
        key_hash=key.lookup,
        request_hash=key.request_hash,
        status=status,
        nonce=nonce,
        body=AESGCM(key.secret).encrypt(nonce, plain, key.lookup),
        now=int(now),
    )
    return status, payload


def purge(tx: Tx, now: float) -> int:
    return tx.run("idempotency_purge", before=int(now) - TTL_SECONDS)
