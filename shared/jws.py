"""Lease tokens: compact JWS signed with Ed25519 (``alg: EdDSA``, RFC 8037).

Both the broker (signing) and the agent (offline verification) use this module, so
that there is exactly one reading of the token format (docs/design.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

# Claims every lease token carries (docs/design.md).
LEASE_CLAIMS = ("iss", "sub", "lid", "est", "pool", "srv", "lt", "n", "iat", "nbf", "exp")


class TokenInvalid(Exception):
    """A token that is malformed, signed by an unknown key, forged or out of its time."""


class UnknownKey(TokenInvalid):
    """The token names a ``kid`` that the given key set does not hold."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"unknown signing key {kid!r}")
        self.kid = kid


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url, accepting only the one canonical spelling.

    The stdlib decoder skips characters outside the alphabet and ignores padding and
    unused low bits, which would let many different strings pass as one token.
    """
    if not isinstance(text, str) or not text.isascii():
        raise TokenInvalid("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise TokenInvalid("not base64url") from exc
    if b64url(raw) != text:
        raise TokenInvalid("not canonical base64url")
    return raw


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes_raw()


def key_id(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint of the OKP key, base64url: stable and collision-free."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64url(public_bytes(key))},
        separators=(",", ":"),
        sort_keys=True,
    )
    return b64url(hashlib.sha256(canonical.encode()).digest())


def jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 8037)."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(public_bytes(key)),
        "kid": key_id(key),
        "alg": "EdDSA",
        "use": "sig",
    }


@dataclass(frozen=True)
class SigningKey:
    """A private key with its ``kid``; ``repr`` never shows key material."""

    kid: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        return cls(key_id(private.public_key()), private)

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        # PEM is the broker's (its keys on disk); the agent never reads one, and the
        # serialization module costs it ~1 MB resident: imported here, when used.
        from cryptography.hazmat.primitives import serialization

        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(key_id(private.public_key()), private)

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"


_HEADER_CACHE: dict[str, str] = {}
# One encoder for every token: ``json.dumps`` with arguments builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def sign(claims: Mapping[str, Any], key: SigningKey) -> str:
    """Sign ``claims`` into a compact JWS."""
    header = _HEADER_CACHE.get(key.kid)
    if header is None:
        header = b64url(json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": key.kid}, separators=(",", ":")).encode())
        _HEADER_CACHE[key.kid] = header
    payload = b64url(_COMPACT(claims).encode())
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{b64url(key.private.sign(signing_input.encode('ascii')))}"


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Parse a JWKS document, keeping only Ed25519 keys; raises ``TokenInvalid``."""
    found: dict[str, Ed25519PublicKey] = {}
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(entries, list):
        raise TokenInvalid("a key set needs a 'keys' list")
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        kid, x = entry.get("kid"), entry.get("x")
        if not isinstance(kid, str) or not isinstance(x, str):
            continue
        raw = b64url_decode(x)
        if len(raw) != 32:
            continue
        found[kid] = Ed25519PublicKey.from_public_bytes(raw)
    return found


def unverified_header(token: str) -> dict[str, Any]:
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise TokenInvalid("not a compact JWS")
    try:
        header = json.loads(b64url_decode(parts[0]))
    except ValueError as exc:
        raise TokenInvalid("header is not JSON") from exc
    if not isinstance(header, dict):
        raise TokenInvalid("header is not an object")
    return header


def verify(
    token: str,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    now: float | None = None,
    leeway: int = 0,
) -> dict[str, Any]:
    """Verify a lease token against ``keys`` (kid → public key) and return its claims.

    Checks the algorithm, the signature, and, when ``now`` is given, ``nbf``/``exp``.
    Raises ``UnknownKey`` for a kid not in ``keys`` (callers refresh the key set and
    try once more) and ``TokenInvalid`` for everything else.
    """
    header = unverified_header(token)
    if header.get("alg") != "EdDSA":
        raise TokenInvalid("algorithm must be EdDSA")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenInvalid("token names no key")
    public = keys.get(kid)
    if public is None:
        raise UnknownKey(kid)
    head, payload, signature = token.split(".")
    try:
        public.verify(b64url_decode(signature), f"{head}.{payload}".encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError) as exc:
        raise TokenInvalid("bad signature") from exc
    claims = _lease_claims(payload)
    if now is not None:
        if not isinstance(claims["exp"], int) or not isinstance(claims["nbf"], int):
            raise TokenInvalid("exp and nbf must be integers")
        if now >= claims["exp"] + leeway:
            raise TokenInvalid("token expired")
        if now + leeway < claims["nbf"]:
            raise TokenInvalid("token not yet valid")
    return claims


def _lease_claims(payload: str) -> dict[str, Any]:
    """The claims in a token's ``payload`` part; ``TokenInvalid`` unless they are a JSON
    object holding every lease claim."""
    try:
        claims = json.loads(b64url_decode(payload))
    except ValueError as exc:
        raise TokenInvalid("claims are not JSON") from exc
    if not isinstance(claims, dict):
        raise TokenInvalid("claims are not an object")
    for name in LEASE_CLAIMS:
        if name not in claims:
            raise TokenInvalid(f"claim {name!r} missing")
    return claims
