"""``enroll --force``: give back the leases of the binding being replaced, through it.

A lease is the old binding's: only its token can give it back, and once ``enroll``
has written the new binding that token is gone. So before the new binding is stored
(and after its code is redeemed: a code refused must not cost the encoders their
seats), the old binding's leases are released:

- **the service runs**: it holds the leases, so it is asked over the local socket
  (``POST /v1/bindings/{id}/release``). It stops the keepers on that binding, releases
  their leases with the old token and keeps them waiting until the new binding is
  written; they then ask through the new one.
- **no service runs**: the leases recorded in ``leases.json`` are released here with the
  old token, and their records kept as wishes, for the service to acquire at start.

Only what the broker confirmed is counted as released (docs/agent.md).
"""

from __future__ import annotations

import contextlib
from typing import Any

from agent.bindings import Binding
from agent.client import BrokerClient
from agent.clock import Clock
from agent.config import Config
from agent.encoder_client import AgentNotRunning, EncoderClient, EncoderClientError
from agent.errors import BrokerRefused, BrokerUnavailable, EnrollError
from agent.records import load_leases, save_leases
from agent.runner import HandBack
from shared.durations import about

# The broker's refusals that mean "this lease holds no seat", not "not released".
_NO_SEAT = frozenset({"lease_gone", "not_found"})


class _Service(EncoderClient):
    """The running service, as ``enroll`` asks it (not an encoder's business)."""

    def release_binding(self, server_id: str, wait: float) -> dict[str, Any]:
        _, data = self._request("POST", f"/v1/bindings/{server_id}/release?wait={wait:g}", wait=wait)
        return dict(data)


def service_running(config: Config) -> bool:
    """Whether the agent service runs; ``EnrollError`` if it runs but cannot be asked.

    Asked before a code is spent: releasing behind a running service's back would race
    its renewals.
    """
    try:
        _Service(config.socket, timeout=5.0).status()
    except AgentNotRunning:
        return False
    except EncoderClientError as exc:
        raise EnrollError(
            f"cannot ask the agent service to release the leases of the binding being replaced ({exc}); "
            "run enroll as root or as the service's user"
        ) from exc
    return True


async def hand_back(config: Config, old: Binding, *, service: bool, clock: Clock) -> HandBack:
    """Release the leases held under ``old``: through the service if it runs, else here."""
    if not service:
        return await _release_stored(config, old, clock.wall())
    wait = config.request_timeout
    try:
        data = _Service(config.socket, timeout=5.0).release_binding(old.server_id, wait)
    except EncoderClientError as exc:
        return HandBack(error=f"the agent service did not release them: {exc}")
    return HandBack(
        released=int(data.get("released") or 0),
        kept=int(data.get("kept") or 0),
        gone=bool(data.get("gone")),
        error=data.get("error"),
        lapse_in=data.get("lapse_in"),
    )


def resume(config: Config) -> None:
    """Nudge the service to read the new binding now: its keepers paused for the hand-back
    go on at once (any request re-reads a changed ``bindings.json``), not at their limit."""
    with contextlib.suppress(EncoderClientError):
        _Service(config.socket, timeout=5.0).status()


async def _release_stored(config: Config, old: Binding, now: float) -> HandBack:
    state = load_leases(config.state_dir)
    live = [
        r
        for r in state.encoders.values()
        if r.held and r.held.server_id == old.server_id and r.held.wall_deadline > now
    ]
    if not live:
        return HandBack()
    released, error = 0, None
    client = BrokerClient(old.broker_url, ca_file=config.ca_file, timeout=config.request_timeout)
    try:
        for record in live:
            assert record.held is not None
            try:
                await client.release(old.token, record.held.lease_id)
            except BrokerRefused as exc:
                if exc.code == "unauthenticated":
                    # The binding was removed at the broker, and its leases with it.
                    for r in live:
                        r.held = None
                    save_leases(config.state_dir, state)
                    return HandBack(released=released, gone=True)
                if exc.code not in _NO_SEAT:
                    error = str(exc)
                    continue
            except BrokerUnavailable as exc:
                error = str(exc)
                break
            else:
                released += 1
            record.held = None
    finally:
        await client.close()
    save_leases(config.state_dir, state)
    kept = [r.held for r in live if r.held is not None]
    lapse_in = max((h.wall_deadline - now for h in kept), default=None)
    return HandBack(released=released, kept=len(kept), error=error, lapse_in=lapse_in)


def _the(count: int) -> str:
    return "the lease" if count == 1 else f"the {count} leases"


def summary(outcome: HandBack, old: Binding) -> str:
    """What became of the old binding's leases, as a clause for enroll's one line ("" if
    it held none)."""
    whose = f'{old.kind} "{old.name}" in pool "{old.pool_name}"'
    if outcome.gone:
        return f"; the broker no longer knows the old binding ({whose}), so it holds no seats for it"
    if not outcome.kept and not outcome.error:
        return f"; released {_the(outcome.released)} of {whose}" if outcome.released else ""
    lapse = f", in {about(outcome.lapse_in)}" if outcome.lapse_in is not None else ""
    seats = f"their seats stay taken until they lapse{lapse}"
    if outcome.released:
        total = outcome.released + outcome.kept
        return (
            f"; released {outcome.released} of the {total} leases of {whose}, "
            f"but not the other {outcome.kept} ({outcome.error}): {seats}"
        )
    what = _the(outcome.kept) if outcome.kept else "the leases"
    return f"; could not release {what} of {whose} ({outcome.error}): {seats}"
