"""Console sessions, kept in this process's memory.

A session stands for one admin token: it holds the token's SHA-256 (the same digest the
database keeps, never the token), a CSRF token, and two deadlines. Sessions are keyed by
the SHA-256 of their random id, so neither the cookie nor the admin token can be read
back out of the table. They do not survive a broker restart (everyone signs in again),
and each replica of a multi-broker deployment keeps its own: such deployments need
sticky sessions for the console, or admins sign in per replica.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

IDLE_SECONDS = 2 * 3600
"""A session unused this long ends."""
MAX_SECONDS = 12 * 3600
"""No session lives longer than this, however busy."""
MAX_SESSIONS = 10_000
"""Beyond this many live sessions the oldest are dropped (memory stays bounded)."""


@dataclass
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


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


class SessionStore:
    """Random session id → :class:`Session`; every method takes the broker's ``now``."""

    def __init__(self) -> None:
        self._sessions: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, token_hash: bytes, now: float) -> tuple[str, Session]:
        """A new session (and its id, for the cookie) for the admin behind ``token_hash``."""
        self._prune(now)
        while len(self._sessions) >= MAX_SESSIONS:
            # dicts keep insertion order: the first entry is the oldest session.
            del self._sessions[next(iter(self._sessions))]
        session_id = secrets.token_urlsafe(32)
        session = Session(token_hash, secrets.token_urlsafe(32), now, now)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str, now: float) -> Session | None:
        """The live session with this id, its idle deadline moved on; None when unknown or over."""
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if now >= session.expires_at():
            del self._sessions[key]
            return None
        session.last_used_at = max(session.last_used_at, now)
        return session

    def close(self, session_id: str) -> bool:
        return self._sessions.pop(_key(session_id), None) is not None

    def _prune(self, now: float) -> None:
        for key, session in list(self._sessions.items()):
            if now >= session.expires_at():
                del self._sessions[key]
