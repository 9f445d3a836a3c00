"""Verifying lease tokens before any encoder sees them (the token contract: docs/design.md).

The keys are pinned: those the broker sent at enrolment, plus those fetched later from
``GET /v1/keys`` of the same broker (over the same verified TLS) when a token names a
``kid`` we do not hold yet, as happens after a key rotation. A token that fails any check
is rejected with ``TokenRejected`` and never served.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import TokenRejected
from shared import jws
from shared.wire import Lease

log = logging.getLogger(__name__)

# Tolerance for the token's nbf against the broker's own time (its ``server_time``).
LEEWAY_SECONDS = 60
# Do not ask for the key set more often than this (monotonic seconds), whatever tokens arrive.
REFRESH_INTERVAL = 10.0


class KeyRing:
    """The lease-signing keys of one broker."""

    def __init__(
        self,
        key_sets: Iterable[dict[str, Any]],
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        *,
        monotonic: Callable[[], float],
        on_refresh: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key_set in key_sets:
            try:
                self._keys.update(jws.keys_from_jwks(key_set))
            except jws.TokenInvalid:
                log.warning("ignoring a malformed stored key set")
        self._fetch = fetch
        self._monotonic = monotonic
        self._on_refresh = on_refresh
        self._last_refresh = float("-inf")

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def refresh(self) -> None:
        """Fetch the broker's key set and add its keys (retired keys are kept until restart)."""
        self._last_refresh = self._monotonic()
        key_set = await self._fetch()
        try:
            fresh = jws.keys_from_jwks(key_set)
        except jws.TokenInvalid as exc:
            raise TokenRejected(f"the broker's key set is malformed ({exc})") from exc
        added = set(fresh) - set(self._keys)
        self._keys.update(fresh)
        if added:
            log.info("fetched %d new lease-signing key(s) from the broker", len(added))
            if self._on_refresh is not None:
                self._on_refresh(key_set)

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
