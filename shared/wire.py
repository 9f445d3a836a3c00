"""Shapes both sides speak: the broker renders them, the agent parses them.

One type per answer, so that the broker's renderer, the agent's parser and the OpenAPI
document (checked against these fields by a test) cannot drift apart. Times are whole
epoch seconds here and RFC 3339 text on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.secret import Secret
from shared.timefmt import format_ts, parse_ts

_TIMESTAMP = {"wire": "date-time"}


@dataclass(frozen=True)
class Lease:
    """The answer to acquiring or renewing a lease; its token is verified separately.

    ``seats`` are the seat objects as sent (``purchase_id``, ``sales_order``, ``count``,
    ``expires_at``, ``state``): the agent passes them on to encoders untouched.
    """

    id: str
    token: Secret = field(repr=False)
    encoder: str
    licence_type: str
    count: int
    pool_id: str
    expires_at: int = field(metadata=_TIMESTAMP)
    renew_after: int = field(metadata=_TIMESTAMP)
    lease_seconds: int
    server_time: int = field(metadata=_TIMESTAMP)
    state: str
    seats: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "token": self.token.reveal(),
            "encoder": self.encoder,
            "licence_type": self.licence_type,
            "count": self.count,
            "pool_id": self.pool_id,
            "expires_at": format_ts(self.expires_at),
            "renew_after": format_ts(self.renew_after),
            "lease_seconds": self.lease_seconds,
            "server_time": format_ts(self.server_time),
            "state": self.state,
            "seats": list(self.seats),
        }

    @classmethod
    def from_json(cls, data: Any) -> Lease:
        """Read a lease answer; raise ``ValueError`` (or ``KeyError``) if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        seats = data["seats"]
        if not isinstance(seats, list) or not all(isinstance(s, dict) for s in seats):
            raise ValueError("seats is not a list of objects")
        return cls(
            id=_text(data, "id"),
            token=Secret(_text(data, "token")),
            encoder=_text(data, "encoder"),
            licence_type=_text(data, "licence_type"),
            count=_whole(data, "count"),
            pool_id=_text(data, "pool_id"),
            expires_at=parse_ts(_text(data, "expires_at")),
            renew_after=parse_ts(_text(data, "renew_after")),
            lease_seconds=_whole(data, "lease_seconds"),
            # The lease's lifetime is measured on the broker's clock, from here.
            server_time=parse_ts(_text(data, "server_time")),
            state=_text(data, "state"),
            seats=tuple(dict(s) for s in seats),
        )


def _text(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def _whole(data: dict[str, Any], name: str) -> int:
    value = data[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} is not an integer")
    return value
