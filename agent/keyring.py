"""Verifying lease tokens before any encoder sees them (the token contract: docs/design.md).

The keys are pinned: those the broker sent at enrolment, plus those fetched later from
``GET /v1/keys`` of the same broker (over the same verified TLS) when a token names a
``kid`` we do not hold yet, as happens after a key rotation, and once a day. A token that
fails any check is rejected with ``TokenRejected`` and never served.

Keys are forgotten, too: a key that the broker's latest key set no longer holds is
dropped as soon as no token the agent holds, unexpired, was signed with it (``in_use``).
So the pinned set stays the broker's published set plus what is still needed, instead of
every key ever seen, and a key the broker has withdrawn stops being trusted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import Retryable, TokenRejected
from shared import jws
from shared.wire import Lease

log = logging.getLogger(__name__)

# Tolerance for the token's nbf against the broker's own time (its ``server_time``).
LEEWAY_SECONDS = 60
# Do not ask for the key set more often than this (monotonic seconds), whatever tokens arrive.
REFRESH_INTERVAL = 10.0
# Read the key set again after this long (monotonic seconds), so that a key the broker
# has stopped publishing is forgotten even when no rotation brings a fetch.
MAX_KEY_SET_AGE = 86_400.0


def signed_by(token: str) -> str | None:
    """The ``kid`` a token names in its header, unverified (None if it names none)."""
    try:
        kid = jws.unverified_header(token).get("kid")
    except jws.TokenInvalid:
        return None
    return kid if isinstance(kid, str) else None


def _no_tokens() -> Collection[str]:
    return ()


class KeyRing:
    """The lease-signing keys of one broker.

    ``key_sets`` are pinned key sets (from enrolment, or stored); ``published`` is the
    last key set read from the broker, if any (stored, so that a restart forgets too);
    ``in_use`` names the kids of the unexpired tokens the agent holds, which are never
    forgotten. ``on_refresh`` is told each newly fetched key set that differs from the
    last, to store it.
    """

    def __init__(
        self,
        key_sets: Iterable[dict[str, Any]],
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        *,
        monotonic: Callable[[], float],
        on_refresh: Callable[[dict[str, Any]], None] | None = None,
        published: dict[str, Any] | None = None,
        in_use: Callable[[], Collection[str]] = _no_tokens,
    ) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._published: frozenset[str] | None = None
        for key_set in key_sets:
            self._pin(key_set)
        if published is not None:
            self._published = self._pin(published)
        self._fetch = fetch
        self._monotonic = monotonic
        self._on_refresh = on_refresh
        self._in_use = in_use
        self._last_refresh = float("-inf")
        self._fetched_at = monotonic()  # what we start with counts as fresh
        self._forget()

    def _pin(self, key_set: dict[str, Any]) -> frozenset[str] | None:
        try:
            keys = jws.keys_from_jwks(key_set)
        except jws.TokenInvalid:
            log.warning("ignoring a malformed stored key set")
            return None
        self._keys.update(keys)
        return frozenset(keys)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def refresh(self) -> None:
        """Fetch the broker's key set: add its keys, forget those it no longer holds."""
        self._last_refresh = self._monotonic()
        key_set = await self._fetch()
        try:
            fresh = jws.keys_from_jwks(key_set)
        except jws.TokenInvalid as exc:
            raise TokenRejected(f"the broker's key set is malformed ({exc})") from exc
        self._fetched_at = self._monotonic()
        added = set(fresh) - set(self._keys)
        self._keys.update(fresh)
        if added:
            log.info("fetched %d new lease-signing key(s) from the broker", len(added))
        if frozenset(fresh) != self._published:
            self._published = frozenset(fresh)
            if self._on_refresh is not None:
                self._on_refresh(key_set)
        self._forget()

    def _forget(self) -> None:
        """Drop each key the broker no longer publishes that no unexpired token we hold needs."""
        if self._published is None:
            return  # never read from the broker: nothing is known to be withdrawn
        needed = self._published | set(self._in_use())
        for kid in [k for k in self._keys if k not in needed]:
            del self._keys[kid]
            log.info("forgot lease-signing key %s: the broker no longer publishes it", kid[:12])

    async def _refresh_if_old(self) -> None:
        now = self._monotonic()
        if now - self._fetched_at < MAX_KEY_SET_AGE or now - self._last_refresh < REFRESH_INTERVAL:
            return
        # A daily check, not a need: if the broker cannot answer it, the pinned keys stand.
        with contextlib.suppress(Retryable):
            await self.refresh()

    async def verify(
        self,
        grant: Lease,
        *,
        encoder: str,
        server_id: str,
        estate_id: str,
        broker_now: Callable[[], float],
    ) -> dict[str, Any]:
        """Check ``grant``'s token end to end and return its claims.

        Signature against a pinned key, the claims against the lease the broker described
        and the encoder and binding it is for, and its times against ``broker_now``: the
        broker's own time (its ``server_time`` plus the monotonic time elapsed since the
        answer came), never the host's wall clock, which may be off or stepped. Read
        again for each check, since a key fetch in between takes time.
        """
        token = grant.token.reveal()
        await self._refresh_if_old()
        self._forget()  # tokens held may have expired since the last look
        try:
            claims = self._verify(token, broker_now())
        except jws.UnknownKey as exc:
            if self._monotonic() - self._last_refresh < REFRESH_INTERVAL:
                raise TokenRejected(f"signed by unknown key {exc.kid!r}") from exc
            await self.refresh()
            try:
                claims = self._verify(token, broker_now())
            except jws.TokenInvalid as again:
                raise TokenRejected(str(again)) from again
        except jws.TokenInvalid as exc:
            raise TokenRejected(str(exc)) from exc
        expected = {
            "sub": encoder,
            "lid": grant.id,
            "n": grant.count,
            "lt": grant.licence_type,
            "srv": server_id,
            "est": estate_id,
        }
        for claim, value in expected.items():
            if claims.get(claim) != value:
                raise TokenRejected(f"claim {claim!r} does not match the lease")
        if claims["exp"] != grant.expires_at:
            raise TokenRejected("token expiry does not match the lease")
        # The leeway is for nbf (clock granularity); a token already expired on the
        # broker's clock is of no use to an encoder, whatever the leeway.
        if claims["exp"] <= broker_now():
            raise TokenRejected("token expired")
        return claims

    def _verify(self, token: str, broker_now: float) -> dict[str, Any]:
        return jws.verify(token, self._keys, now=broker_now, leeway=LEEWAY_SECONDS)
