"""Enrolment: redeem an 8-digit authentication code for a binding; see docs/design.md."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from agent.bindings import Binding, load_bindings, save_bindings
from agent.client import BrokerClient
from agent.clock import Clock, SystemClock
from agent.config import Config, check_broker_url
from agent.errors import BrokerRefused, BrokerUnavailable, EnrollError
from agent.handback import hand_back, resume, service_running, summary
from agent.statedir import check_writable, ensure_dir
from shared import codes as shared_codes
from shared import jws
from shared.durations import about
from shared.names import is_name
from shared.secret import Secret


class CodeFormatError(EnrollError):
    """A code not 8 digits or failing its check digit, or a name the broker would refuse.

    Caught before any network call, so nothing is sent and no code or budget is spent.
    """


def normalise_code(parts: Sequence[str]) -> str:
    """``48213907``, ``4821 3907`` (one argument or two) or ``4821-3907`` → ``48213907``.

    Raises ``CodeFormatError`` unless it is 8 digits ending in their Damm check digit.
    """
    typed = " ".join(parts).strip()
    code = shared_codes.normalise_code(typed)
    if code is None:
        raise CodeFormatError(f'"{typed}" is not an enrolment code: a code is 8 digits, e.g. 4821 3907')
    if not shared_codes.has_valid_check_digit(code):
        # A typo (one wrong digit, two neighbours swapped) never reaches the broker, where
        # it would spend this address's failure budget (docs/design.md, "Authentication code").
        raise CodeFormatError(f"the code {grouped(code)} is not valid: check the digits and type it again")
    return code


def grouped(code: str) -> str:
    return f"{code[:4]} {code[4:]}"


def check_name(name: str, what: str) -> str:
    """``name`` if the broker would take it; the code is not spent on one it would refuse.

    The rule is the broker's own (``shared.names``), no stricter and no looser.
    """
    if not is_name(name):
        raise CodeFormatError(f'{what} "{name}" must be 1–64 printable characters')
    return name


@dataclass(frozen=True)
class Enrolment:
    """The binding stored, and what became of the leases of the one it replaced (a
    clause for the one line ``enroll`` prints, "" if there were none)."""

    binding: Binding
    handed_back: str = ""


async def enroll(
    config: Config,
    code: str,
    *,
    broker_url: str,
    name: str,
    domain: str | None = None,
    force: bool = False,
    clock: Clock | None = None,
) -> Enrolment:
    """Redeem ``code`` at the broker and store the binding.

    Everything that can be checked locally is checked before the code is spent: the
    URL, the names, an existing binding (needs ``force``), a state directory writable
    for its owner, and that a running service can be asked to release the leases of
    the binding replaced (``agent/handback.py``), which happens after the code is
    redeemed and before the new binding is stored.
    """
    url = check_broker_url(broker_url)
    kind = "domain" if domain is not None else "server"
    label = check_name(domain if domain is not None else name, kind + " name")
    ensure_dir(config.state_dir)
    check_writable(config.state_dir)
    bindings = load_bindings(config.state_dir)
    existing = bindings.get(domain)
    if existing is not None and not force:
        raise EnrollError(
            f"this state directory is already enrolled as {existing.describe()}; add --force to replace that binding"
        )
    service = existing is not None and service_running(config)
    binding = await _redeem(config, code, url, label, kind)
    handed_back = ""
    if existing is not None:
        outcome = await hand_back(config, existing, service=service, clock=clock or SystemClock())
        handed_back = summary(outcome, existing)
    bindings.put(binding)
    save_bindings(config.state_dir, bindings)
    if service:
        resume(config)
    return Enrolment(binding, handed_back)


async def _redeem(config: Config, code: str, url: str, label: str, kind: str) -> Binding:
    """Spend ``code`` at the broker at ``url``: the new binding (not yet stored)."""
    client = BrokerClient(url, ca_file=config.ca_file, timeout=config.request_timeout)
    try:
        data = await client.enroll(code, label, kind)
    except BrokerRefused as exc:
        raise EnrollError(_refusal(exc, code, url)) from exc
    except BrokerUnavailable as exc:
        if exc.reason == "rate limited":
            wait = f" in {about(exc.retry_after)}" if exc.retry_after else " later"
            raise EnrollError(
                f"the broker at {url} is refusing enrolments from this address for now "
                f"(too many attempts); try again{wait}"
            ) from exc
        raise
    finally:
        await client.close()
    try:
        if not jws.keys_from_jwks(data["keys"]):
            raise jws.TokenInvalid("no Ed25519 key")
        return Binding(
            kind=str(data.get("kind") or kind),
            name=str(data.get("name") or label),
            server_id=str(data["server_id"]),
            token=Secret(str(data["server_token"])),
            estate_id=str(data["estate_id"]),
            estate_name=str(data.get("estate_name") or data["estate_id"]),
            pool_id=str(data["pool_id"]),
            pool_name=str(data.get("pool_name") or data["pool_id"]),
            broker_url=url,
            keys=dict(data["keys"]),
            enrolled_at=int(time.time()),
        )
    except (jws.TokenInvalid, KeyError, TypeError, ValueError) as exc:
        raise EnrollError(
            f"the broker at {url} accepted the code but sent an unusable answer ({exc}); "
            "ask your administrator for a new code"
        ) from exc


def _refusal(exc: BrokerRefused, code: str, url: str) -> str:
    if exc.code == "auth_code_invalid":
        return (
            f"the broker refused code {grouped(code)}: it is unknown, already used, "
            "expired or revoked; ask your administrator for a new code"
        )
    if exc.code == "not_found":
        return (
            f"{url} is not the broker's address (nothing answers enrolments at {url}/v1/enroll); "
            "give the address the console is served at, e.g. https://licences.example.com"
        )
    if exc.code == "validation_error":
        return f"the broker refused the enrolment: {exc.detail or 'invalid request'}"
    return f"the broker refused the enrolment: {exc}"
