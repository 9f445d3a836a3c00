"""Each encoder's record in ``leases.json``: what it wants and which lease it holds.

Written by the running service, and read back at start so that a restart keeps the
encoders' leases; the file also keeps key sets fetched since enrolment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.statedir import FORMAT, encode_document, read_document, write_encoded
from shared.secret import Secret

LEASES_FILE = "leases.json"


@dataclass(frozen=True, slots=True)
class Want:
    """What an encoder asked for. ``kind`` (``hardware`` or ``container``) picks the
    broker's soft-lock window for the encoder; None leaves the broker's default."""

    licence_type: str
    count: int
    domain: str | None = None
    kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "licence_type": self.licence_type,
            "count": self.count,
            "domain": self.domain,
            "encoder_kind": self.kind,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Want:
        domain, kind = data.get("domain"), data.get("encoder_kind")
        return cls(
            str(data["licence_type"]), int(data["count"]), str(domain) if domain else None, str(kind) if kind else None
        )


@dataclass(frozen=True, slots=True)
class Held:
    """A lease the broker granted, with its verified token.

    ``expires_at``, ``renew_after`` and ``server_time`` are the broker's, on the broker's
    clock. ``deadline`` and ``renew_at`` are on the agent's monotonic clock: the instant
    the request that won the lease was sent, plus the lifetime the broker gave
    (``expires_at - server_time``, so the host's clock error does not enter), less a
    safety margin. A host clock stepped either way changes neither.

    The state file keeps the monotonic deadline with ``boot_id`` (the monotonic clock's
    origin), and ``wall_deadline``, the same deadline on the host's wall clock as it read
    then: monotonic time does not survive a reboot. A lease read back from the file is
    served no longer than ``resumed`` allows, and renewed at once.
    """

    lease_id: str
    token: Secret = field(repr=False)
    licence_type: str
    count: int
    domain: str | None
    server_id: str
    expires_at: int
    renew_after: int
    server_time: int
    deadline: float
    renew_at: float
    wall_deadline: float
    boot_id: str
    purchase_state: str
    seats: tuple[dict[str, Any], ...] = ()

    @property
    def lifetime(self) -> int:
        """Seconds from the broker's answer to the lease's expiry, on the broker's clock."""
        return self.expires_at - self.server_time

    def resumed(self, monotonic: float, wall: float, boot_id: str) -> Held:
        """This lease, read back after a restart, on this process's monotonic clock.

        On the same boot the stored monotonic deadline stands as it was. After a reboot
        only the wall clock links then and now: time left is what the stored wall-clock
        deadline says, but never more than the lease's whole lifetime (the host's clock
        may have gone back meanwhile) and never less than nothing. Renewed at once either
        way.
        """
        if boot_id and boot_id == self.boot_id and math.isfinite(self.deadline):
            deadline = min(self.deadline, monotonic + self.lifetime)
        else:
            deadline = monotonic + max(0.0, min(self.wall_deadline - wall, float(self.lifetime)))
        return replace(self, deadline=deadline, renew_at=monotonic, boot_id=boot_id)

    def to_json(self) -> dict[str, Any]:
        ahead = self.deadline - self.renew_at
        wall_renew_at = self.wall_deadline - ahead if math.isfinite(ahead) else self.wall_deadline
        return {
            "lease_id": self.lease_id,
            "token": self.token.reveal(),
            "licence_type": self.licence_type,
            "count": self.count,
            "domain": self.domain,
            "server_id": self.server_id,
            "expires_at": self.expires_at,
            "renew_after": self.renew_after,
            "server_time": self.server_time,
            # Host wall-clock times: only an upper bound once read back (see ``resumed``).
            "deadline": self.wall_deadline,
            "renew_at": wall_renew_at,
            "monotonic_deadline": self.deadline if math.isfinite(self.deadline) else None,
            "boot_id": self.boot_id,
            "purchase_state": self.purchase_state,
            "seats": list(self.seats),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Held:
        """A stored lease; not to be served before ``resumed``."""
        domain = data.get("domain")
        renew_after = int(data["renew_after"])
        # Files written before server_time was kept: renew_after is a lower bound, which
        # bounds the lifetime to two thirds of what it was (the lease is renewed at once).
        server_time = int(data.get("server_time", renew_after))
        return cls(
            lease_id=str(data["lease_id"]),
            token=Secret(str(data["token"])),
            licence_type=str(data["licence_type"]),
            count=int(data["count"]),
            domain=str(domain) if domain else None,
            server_id=str(data["server_id"]),
            expires_at=int(data["expires_at"]),
            renew_after=renew_after,
            server_time=server_time,
            deadline=float(data.get("monotonic_deadline") or "-inf"),
            renew_at=float("-inf"),
            wall_deadline=float(data["deadline"]),
            boot_id=str(data.get("boot_id") or ""),
            purchase_state=str(data["purchase_state"]),
            seats=tuple(dict(s) for s in data.get("seats") or ()),
        )


@dataclass(slots=True)
class EncoderRecord:
    """One encoder's persisted state: its wish, its lease, and why it stopped trying.

    ``halted`` is ``"revoked"`` or ``"denied"`` when the broker's last word was final for
    the current ``want``; the agent does not ask again until the encoder asks again.
    """

    encoder: str
    want: Want | None = None
    held: Held | None = None
    halted: str | None = None
    error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "want": self.want.to_json() if self.want else None,
            "held": self.held.to_json() if self.held else None,
            "halted": self.halted,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, encoder: str, data: dict[str, Any]) -> EncoderRecord:
        want, held = data.get("want"), data.get("held")
        return cls(
            encoder=encoder,
            want=Want.from_json(want) if want else None,
            held=Held.from_json(held) if held else None,
            halted=data.get("halted"),
            error=data.get("error"),
        )


@dataclass
class LeaseState:
    encoders: dict[str, EncoderRecord] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "encoders": {s: r.to_json() for s, r in sorted(self.encoders.items())},
            "keys": self.keys,
        }


def load_leases(state_dir: Path) -> LeaseState:
    path = state_dir / LEASES_FILE
    document = read_document(path)
    if document is None:
        return LeaseState()
    try:
        return LeaseState(
            encoders={
                serial: EncoderRecord.from_json(serial, item)
                for serial, item in dict(document.get("encoders") or {}).items()
            },
            keys={url: dict(jwks) for url, jwks in dict(document.get("keys") or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path} is damaged: {exc!s}") from exc


def save_leases(state_dir: Path, state: LeaseState) -> None:
    write_leases_encoded(state_dir, encode_leases(state))


def encode_leases(state: LeaseState) -> bytes:
    """The lease state as ``write_leases_encoded`` writes it, taken now."""
    return encode_document(state.to_json())


def write_leases_encoded(state_dir: Path, data: bytes) -> None:
    """Write what ``encode_leases`` returned (safe to call off the loop). The encoding is
    done before, on the loop: the worker thread only writes and syncs, so that it builds
    no large objects of its own (in its own malloc arena, docs/agent.md "Footprint")."""
    write_encoded(state_dir / LEASES_FILE, data)
