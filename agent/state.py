"""What survives a restart: the bindings, and each encoder's wanted and held lease.

Two files under the state directory, both mode 0600 and replaced atomically (write a
temporary file, fsync it, rename it over the old one, fsync the directory), so that a
crash leaves either the old or the new file, never a torn one:

- ``bindings.json``: written by ``tenure-agent enroll``; the server binding and any
  domain bindings, each with its server token and the broker's pinned keys.
- ``leases.json``: written by the running service; per encoder what it wants and which
  lease it holds, and key sets fetched since enrolment.

The directory itself is kept mode 0700: the files hold the server tokens and lease tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.errors import StateError

FORMAT = 1
BINDINGS_FILE = "bindings.json"
LEASES_FILE = "leases.json"


class Secret:
    """A string that never shows itself in ``repr`` or ``str`` (starlette's ``Secret``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible tag for log lines."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:8]

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# ---------------------------------------------------------------------------- files


def ensure_dir(path: Path) -> None:
    """Create the state directory (mode 0700) if needed; raise ``StateError`` if unusable."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create state directory {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(f"state directory {path} is not writable by this user")


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; be exact
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror}") from exc


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise StateError(f"{path} is not valid JSON; move it away and enrol again") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError(f"{path} has an unknown format")
    return document


# ---------------------------------------------------------------------------- bindings


@dataclass(frozen=True)
class Binding:
    """This host (``kind="server"``) or one tenant domain on it, bound to one pool."""

    kind: str
    name: str
    server_id: str
    token: Secret = field(repr=False)
    estate_id: str
    estate_name: str
    pool_id: str
    pool_name: str
    broker_url: str
    keys: dict[str, Any] = field(repr=False)
    enrolled_at: int

    @property
    def domain(self) -> str | None:
        return self.name if self.kind == "domain" else None

    def describe(self) -> str:
        return f'{self.kind} "{self.name}" in pool "{self.pool_name}" of estate "{self.estate_name}"'

    def public_view(self) -> dict[str, Any]:
        """What ``status`` shows of the binding: everything but its token and keys."""
        return {
            "kind": self.kind,
            "name": self.name,
            "server_id": self.server_id,
            "estate_id": self.estate_id,
            "estate_name": self.estate_name,
            "pool_id": self.pool_id,
            "pool_name": self.pool_name,
            "broker_url": self.broker_url,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "server_id": self.server_id,
            "server_token": self.token.reveal(),
            "estate_id": self.estate_id,
            "estate_name": self.estate_name,
            "pool_id": self.pool_id,
            "pool_name": self.pool_name,
            "broker_url": self.broker_url,
            "keys": self.keys,
            "enrolled_at": self.enrolled_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Binding:
        return cls(
            kind=str(data["kind"]),
            name=str(data["name"]),
            server_id=str(data["server_id"]),
            token=Secret(str(data["server_token"])),
            estate_id=str(data["estate_id"]),
            estate_name=str(data["estate_name"]),
            pool_id=str(data["pool_id"]),
            pool_name=str(data["pool_name"]),
            broker_url=str(data["broker_url"]),
            keys=dict(data["keys"]),
            enrolled_at=int(data["enrolled_at"]),
        )


@dataclass
class Bindings:
    """One server binding and any number of domain bindings (DESIGN.md §5)."""

    server: Binding | None = None
    domains: dict[str, Binding] = field(default_factory=dict)

    def get(self, domain: str | None) -> Binding | None:
        return self.server if domain is None else self.domains.get(domain)

    def put(self, binding: Binding) -> None:
        if binding.kind == "server":
            self.server = binding
        else:
            self.domains[binding.name] = binding

    def all(self) -> list[Binding]:
        found = [self.server] if self.server is not None else []
        return found + [self.domains[name] for name in sorted(self.domains)]


def load_bindings(state_dir: Path) -> Bindings:
    document = _read_json(state_dir / BINDINGS_FILE)
    if document is None:
        return Bindings()
    try:
        server = document.get("server")
        return Bindings(
            server=Binding.from_json(server) if server else None,
            domains={name: Binding.from_json(item) for name, item in dict(document.get("domains") or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{state_dir / BINDINGS_FILE} is damaged: {exc!s}") from exc


def save_bindings(state_dir: Path, bindings: Bindings) -> None:
    ensure_dir(state_dir)
    _write_json(
        state_dir / BINDINGS_FILE,
        {
            "format": FORMAT,
            "server": bindings.server.to_json() if bindings.server else None,
            "domains": {name: b.to_json() for name, b in sorted(bindings.domains.items())},
        },
    )


def bindings_mtime(state_dir: Path) -> float:
    try:
        return (state_dir / BINDINGS_FILE).stat().st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------- leases


@dataclass(frozen=True)
class Want:
    """What an encoder asked for."""

    licence_type: str
    count: int
    domain: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"licence_type": self.licence_type, "count": self.count, "domain": self.domain}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Want:
        domain = data.get("domain")
        return cls(str(data["licence_type"]), int(data["count"]), str(domain) if domain else None)


@dataclass(frozen=True)
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


@dataclass
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
    document = _read_json(path)
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
    write_leases_snapshot(state_dir, state.to_json())


def write_leases_snapshot(state_dir: Path, snapshot: dict[str, Any]) -> None:
    """Write a snapshot taken with ``LeaseState.to_json()`` (safe to call off the loop)."""
    _write_json(state_dir / LEASES_FILE, snapshot)
