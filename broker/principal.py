"""Who is calling: the resolved identity behind a bearer token."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.errors import Forbidden, NotFound


@dataclass(frozen=True)
class Principal:
    kind: str  # "operator" | "admin" | "server" | "metrics" (reads /metrics, nothing else)
    token_hash: bytes
    estate_id: str | None = None
    admin_id: str | None = None
    name: str | None = None
    primary: bool = False
    server_id: str | None = None
    pool_id: str | None = None
    credential: str | None = field(default=None, repr=False, compare=False)
    """The raw bearer token or console session id of the request at hand, set by
    ``authenticate`` on a per-request copy (never on a cached principal, never stored): the
    idempotency records are encrypted under it, because the database holds only its hash."""

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
