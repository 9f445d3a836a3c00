"""Who is calling: the resolved identity behind a bearer token."""

from __future__ import annotations

from dataclasses import dataclass

from broker.errors import Forbidden, NotFound


@dataclass(frozen=True)
class Principal:
    kind: str  # "operator" | "admin" | "server"
    token_hash: bytes
    estate_id: str | None = None
    admin_id: str | None = None
    name: str | None = None
    primary: bool = False
    server_id: str | None = None
    pool_id: str | None = None

    @property
    def actor_id(self) -> str | None:
        return self.admin_id or self.server_id

    def require_estate(self, estate_id: str) -> None:
        """Admins reach only their own estate; another estate's id is simply not found."""
        if self.kind == "operator":
            return
        if self.kind != "admin":
            raise Forbidden("This route is for estate admins.")
        if self.estate_id != estate_id:
            raise NotFound("No such estate.")


OPERATOR_NAME = "operator"
