"""The Standard Webhooks signature: ``webhook-signature: v1,<base64 HMAC-SHA256>``.

The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; the key is the
bytes that the secret ``whsec_<base64>`` spells. During a rotation both the new and the
old secret sign, their signatures separated by a space, as the convention allows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> bytes:
    """The raw bytes of a new signing secret."""
    return secrets.token_bytes(SECRET_BYTES)


def show(raw: bytes) -> str:
    """The secret as its receiver configures it: ``whsec_<base64>``."""
    return PREFIX + base64.b64encode(raw).decode()


def signature(raw: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(raw, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three ``webhook-*`` headers of one attempt, signed with each of ``keys``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp, body) for k in keys),
        "content-type": "application/json",
        "user-agent": "tenure-webhooks/1",
    }
