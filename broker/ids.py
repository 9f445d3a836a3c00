"""Identifiers, bearer tokens and their hashes."""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
from collections.abc import Callable

TOKEN_KINDS = {"op": "operator", "adm": "admin", "srv": "server"}

IdSource = Callable[[str], str]
"""Makes the id of a new row from its prefix; a store hands it to domain code as
``tx.new_id``, so that a test can inject ids as it injects the clock."""


def new_id(prefix: str) -> str:
    """An opaque id such as ``pool_4kq9…``: 80 random bits, URL-safe."""
    return f"{prefix}_{secrets.token_hex(10)}"


class CountingIds:
    """Ids that count up from 1, shaped like ``new_id``'s (tests).

    A replayed sequence of operations gets the same ids, so ties that ids decide (equal
    expiries are ordered by id) fall the same way every time.
    """

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, prefix: str) -> str:
        return f"{prefix}_{next(self._counter):020d}"


def new_token(kind: str) -> str:
    """A bearer token ``tnr_<kind>_<43 chars>`` carrying 256 random bits."""
    if kind not in TOKEN_KINDS:
        raise ValueError(f"no token kind {kind!r}")
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"tnr_{kind}_{raw}"


def token_hash(token: str) -> bytes:
    """What is stored for a token. SHA-256 suffices: the token has 256 bits of entropy."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
