"""Console sessions, kept in the database so that any broker on it can continue one.

A session stands for one admin token. Its row holds the token's SHA-256 (the same digest
``admins.token_hash`` keeps, never the token), when it started and when it was last
used; the row is keyed by the SHA-256 of the session's random id, so neither the cookie
nor the admin token can be read back out of the table. The CSRF token is not stored at
all: it is derived from the session id (an HMAC keyed by it), so only a request that
carries the cookie can learn it, and a copy of the database yields neither.

Because the table is shared, an admin signs in through one broker and carries on through
another on the same database, and a session outlives a broker restart. It ends after
``IDLE_SECONDS`` unused or ``MAX_SECONDS`` in all, when the admin signs out, when the
admin is removed or given a new token (the session is looked up through the admin's
live token digest), or when it is among the oldest beyond a cap (``MAX_PER_ADMIN`` for
one admin, ``MAX_SESSIONS`` in all).

Last use is written at most once per ``TOUCH_SECONDS`` per session, so that a busy
console page does not cost a database write per request: a session therefore ends after
between ``IDLE_SECONDS - TOUCH_SECONDS`` and ``IDLE_SECONDS`` of disuse. Times are whole
epoch seconds, as elsewhere in the database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace

from broker import ids
from broker.store.base import Store, Tx

IDLE_SECONDS = 2 * 3600
"""A session unused this long ends."""
MAX_SECONDS = 12 * 3600
"""No session lives longer than this, however busy."""
TOUCH_SECONDS = 60
"""Last use is recorded at most this often per session (one write a minute, not one a request)."""
MAX_PER_ADMIN = 20
"""Beyond this many live sessions of one admin token, its oldest end."""
MAX_SESSIONS = 10_000
"""Beyond this many live sessions in all, the oldest end (the table stays bounded)."""


@dataclass(frozen=True)
class Session:
    token_hash: bytes
    csrf_token: str
    started_at: float
    last_used_at: float

    def expires_at(self) -> float:
        return min(self.last_used_at + IDLE_SECONDS, self.started_at + MAX_SECONDS)

    def csrf_matches(self, presented: str | None) -> bool:
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), self.csrf_token.encode("ascii"))


def csrf_token(session_id: str) -> str:
    """The session's CSRF token: anyone holding the session id can work it out, nobody else."""
    mac = hmac.new(session_id.encode("utf-8", "surrogatepass"), b"tenure-console-csrf", hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def open_session(tx: Tx, now: float, token_hash: bytes, session_id: str) -> Session:
    """Record a new session ``session_id`` for the admin behind ``token_hash``.

    Sessions over, and the oldest beyond the caps, are deleted first.
    """
    at = int(now)
    tx.run("sessions_prune", idle_before=at - IDLE_SECONDS, started_before=at - MAX_SECONDS)
    mine = int(tx.scalar("sessions_count_of_token", token_hash=token_hash))
    if mine >= MAX_PER_ADMIN:
        tx.run("sessions_drop_oldest_of_token", token_hash=token_hash, count=mine - MAX_PER_ADMIN + 1)
    total = int(tx.scalar("sessions_count"))
    if total >= MAX_SESSIONS:
        tx.run("sessions_drop_oldest", count=total - MAX_SESSIONS + 1)
    tx.run("session_insert", id_hash=ids.token_hash(session_id), token_hash=token_hash, now=at)
    return Session(token_hash, csrf_token(session_id), at, at)


def find_session(tx: Tx, now: float, session_id: str) -> Session | None:
    """The live session with this id; None when unknown, over, or its admin is gone."""
    row = tx.one("session_get", id_hash=ids.token_hash(session_id))
    if row is None:
        return None
    session = Session(bytes(row["token_hash"]), csrf_token(session_id), row["started_at"], row["last_used_at"])
    return session if now < session.expires_at() else None


def touch_session(tx: Tx, now: float, session_id: str) -> None:
    """Move the session's idle deadline on (never back)."""
    tx.run("session_touch", id_hash=ids.token_hash(session_id), now=int(now))


def close_session(tx: Tx, session_id: str) -> bool:
    return tx.run("session_delete", id_hash=ids.token_hash(session_id)) > 0


class SessionStore:
    """The console's sessions in ``store``; every method takes the broker's ``now``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def open(self, token_hash: bytes, now: float) -> tuple[str, Session]:
        """A new session (and its id, for the cookie) for the admin behind ``token_hash``."""
        session_id = secrets.token_urlsafe(32)
        session = await self.store.write(lambda tx: open_session(tx, now, token_hash, session_id))
        return session_id, session

    async def get(self, session_id: str, now: float) -> Session | None:
        """The live session with this id, its idle deadline moved on; None when unknown or over.

        A read, plus a write only when last use was recorded ``TOUCH_SECONDS`` ago or more.
        """
        session = await self.store.read(lambda tx: find_session(tx, now, session_id))
        if session is not None and now - session.last_used_at >= TOUCH_SECONDS:
            await self.store.write(lambda tx: touch_session(tx, now, session_id))
            session = replace(session, last_used_at=int(now))
        return session

    async def close(self, session_id: str) -> bool:
        return await self.store.write(lambda tx: close_session(tx, session_id))
