"""Identifiers, bearer tokens and their hashes."""

from __future__ import annotations

import base64
import hashlib
import secrets

TOKEN_KINDS = {"op": "operator", "adm": "admin", "srv": "server"}


def new_id(prefix: str) -> str:
    """An opaque id such as ``pool_4kq9…``: 80 random bits, URL-safe."""
    return f"{prefix}_{secrets.token_hex(10)}"


def new_token(kind: str) -> str:
    """A bearer token ``tnr_<kind>_<43 chars>`` carrying 256 random bits."""
    assert kind in TOKEN_KINDS
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"tnr_{kind}_{raw}"


def token_hash(token: str) -> bytes:
    """What is stored for a token. SHA-256 suffices: the token has 256 bits of entropy."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
