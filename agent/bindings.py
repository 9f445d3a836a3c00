"""The bindings: this host's server binding and its domain bindings, in ``bindings.json``.

Written by ``tenure-agent enroll``; each binding keeps its server token and the broker's
pinned keys. One server binding and any number of domain bindings, one per tenant
domain (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.statedir import FORMAT, ensure_dir, read_document, write_document
from shared.secret import Secret

BINDINGS_FILE = "bindings.json"


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
    """One server binding and any number of domain bindings (docs/design.md)."""

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
    document = read_document(state_dir / BINDINGS_FILE)
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
    write_document(
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
