"""Idempotency-Key: a retried POST returns the first completed answer and changes nothing.

Records live 24 h, scoped to the caller's token. Stored answers are encrypted with
AES-GCM under a key derived (HKDF) from the idempotency key itself, and the record is
found by a separate hash of it: a copy of the database alone reveals no token or code
that a response carried. The record is written in the same transaction as the change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    def derive(cls, key: str, scope: bytes, method: str, path: str, body: bytes) -> IdempotencyKey:
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise ValidationFailed([{"field": "Idempotency-Key", "message": "must be 1-255 printable characters"}])
        material = HKDF(hashes.SHA256(), 64, salt=scope, info=b"tenure-idempotency").derive(key.encode())
        request = hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).digest()
        return cls(material[:32], material[32:], request)


Answer = tuple[int, Any]


def run(tx: Tx, now: float, key: IdempotencyKey, fn: Callable[[], Answer]) -> Answer:
    """Replay the stored answer for ``key`` or run ``fn`` and store its answer."""
    row = tx.one("idempotency_get", key_hash=key.lookup)
    if row is not None and row["created_at"] + TTL_SECONDS > now:
        if row["request_hash"] != key.request_hash:
            raise IdempotencyKeyReused("This Idempotency-Key was used for a different request; use a new key.")
        body = AESGCM(key.secret).decrypt(row["nonce"], row["body"], key.lookup)
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
