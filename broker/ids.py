"""Identifiers, bearer tokens and their hashes."""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
import time
from collections.abc import Callable

TOKEN_KINDS = {"op": "operator", "adm": "admin", "srv": "server"}

IdSource = Callable[[str], str]
"""Makes the id of a new row from its prefix; a store hands it to domain code as
``tx.new_id``, so that a test can inject ids as it injects the clock."""


def new_id(prefix: str) -> str:
    """An opaque id such as ``lse_019ad98e5c41a3f07c2be915d48e``: the millisecond it was
    made (48 bits), then 64 random bits, in hex.

    Ids made one after another sort together, so that a new row's key lands beside the
    last one's in the indexes keyed on it (a lease's, its seats') instead of on a page of
    its own: a batch of acquires writes 20-50 % fewer WAL bytes, and its checkpoints copy
    a fifth to a third of the pages (docs/performance.md).
    """
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


class CountingIds:
    """Ids that count up from 1, shaped like ``new_id``'s (tests).

    A replayed sequence of operations gets the same ids, so ties that ids decide (equal
    expiries are ordered by id) fall the same way every time.
    """

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, prefix: str) -> str:
        return f"{prefix}_{next(self._counter):028d}"


def new_token(kind: str) -> str:
    """A bearer token ``tnr_<kind>_<43 chars>`` carrying 256 random bits."""
    if kind not in TOKEN_KINDS:
        raise ValueError(f"no token kind {kind!r}")
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"tnr_{kind}_{raw}"


def token_hash(token: str) -> bytes:
    """What is stored for a token. SHA-256 suffices: the token has 256 bits of entropy."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
