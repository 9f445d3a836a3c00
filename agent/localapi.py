"""The local API: HTTP over a Unix socket, for encoder software on this host.

Routes (documented in docs/encoder-integration.md):

- ``GET    /v1/status``                           bindings, broker reachability, encoders
- ``GET    /v1/encoders``                         every encoder's lease (without tokens)
- ``PUT    /v1/encoders/{serial}/lease``          ``{licence_type, count, domain?, encoder_kind?}``
- ``GET    /v1/encoders/{serial}/lease``          ``?wait=S&version=N`` long-polls a change
- ``DELETE /v1/encoders/{serial}/lease``          release; ``?wait=S`` waits for the broker
- ``POST   /v1/bindings/{server_id}/release``     ``enroll --force``: give back that binding's
  leases before it is replaced (root or the service's own user only; ``agent/handback.py``)

Who can connect is decided by the socket's permissions (mode 0660 by default); who may
act for which encoders, by the ``[local_api] allow`` rules on the caller's peer
credentials (``agent/access.py``; none: everyone who can connect may act for everything).
A caller outside its rules gets ``403 forbidden``, and sees only its own encoders and
domains in the lists. Errors are ``application/problem+json`` with a ``code``, as the
broker's.

Served by ``agent/http1.py`` (aiohttp's request parser, answers written there) and a
five-route table here, not by aiohttp's server classes, which cost the resident agent
about 1 MB for nothing it needs (docs/agent.md, "Footprint").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from agent.access import Caller, Scope, peer_credentials
from agent.clock import wait_event
from agent.host import Host
from agent.http1 import Request, Response, Server, json_response
from agent.keeper import Keeper
from agent.records import Want

log = logging.getLogger(__name__)

SERIAL = re.compile(r"[A-Za-z0-9._:-]{1,128}")
LICENCE_TYPE = re.compile(r"[a-z0-9-]{1,64}")
# The broker's soft-lock window follows the kind an encoder says at its first grant.
ENCODER_KINDS = ("hardware", "container")
MAX_COUNT = 10_000
MAX_WAIT = 300.0
MAX_BODY = 64 * 1024
# On stop, a long-poll in progress gets this long (on the host's clock) to finish before
# it is cut: stopping must leave time to release the leases within systemd's
# TimeoutStopSec.
SHUTDOWN_TIMEOUT = 1.0
# Real seconds aiohttp then has to cancel what outlived that grace.
CUT_TIMEOUT = 0.1


class Problem(Exception):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def _problem(status: int, code: str, detail: str, **extra: Any) -> Response:
    body = {
        "type": "about:blank",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return json_response(body, status=status, content_type="application/problem+json")


def _serial(serial: str) -> str:
    if not SERIAL.fullmatch(serial):
        raise Problem(400, "validation_error", "encoder serial must be 1–128 of A-Z a-z 0-9 . _ : -")
    return serial


def _float_query(request: Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT:
        raise Problem(400, "validation_error", f"'{name}' must be 0–{MAX_WAIT:g} seconds")
    return value


def _domains(keeper: Keeper | None) -> set[str | None]:
    """The domains an encoder's wish and lease are in (acting on it acts in each)."""
    if keeper is None:
        return set()
    r = keeper.record
    return {x.domain for x in (r.want, r.held) if x is not None}


def _forbidden(scope: Scope, serial: str) -> Problem:
    pid = f" (pid {scope.caller.pid})" if scope.caller is not None else ""
    log.info("local API: refused %s%s for encoder %s", scope.who(), pid, serial)
    return Problem(
        403,
        "forbidden",
        f"{scope.who()} may not act for encoder {serial} (the agent's [local_api] allow rules)",
    )


def _authorise(scope: Scope, serial: str, keeper: Keeper | None, asked: Want | None = None) -> None:
    """403 unless ``scope`` may act for ``serial`` in every domain it is or would be in."""
    domains = _domains(keeper) | ({asked.domain} if asked is not None else set())
    if not scope.may_name(serial) or not scope.may(serial, domains):
        raise _forbidden(scope, serial)


def _keeper_or_404(host: Host, serial: str, scope: Scope) -> Keeper:
    keeper = host.runner.get(serial)
    _authorise(scope, serial, keeper)
    if keeper is None or keeper.record.want is None:
        raise Problem(404, "not_found", f"encoder {serial} has asked for no lease")
    return keeper


def _visible(scope: Scope, keeper: Keeper) -> bool:
    return scope.may(keeper.encoder, _domains(keeper))


async def get_status(host: Host, request: Request, scope: Scope) -> Response:
    probe = request.query.get("probe", "") in ("1", "true", "yes")
    status = await host.status(probe=probe)
    if not scope.everything:
        status["bindings"] = [
            b for b in status["bindings"] if scope.sees_domain(b["name"] if b["kind"] == "domain" else None)
        ]
        status["encoders"] = [
            e for e in status["encoders"] if (k := host.runner.get(e["encoder"])) is not None and _visible(scope, k)
        ]
    return json_response(status)


async def list_encoders(host: Host, request: Request, scope: Scope) -> Response:
    keepers = [host.runner.keepers[s] for s in sorted(host.runner.keepers)]
    items = [k.view(with_token=False) for k in keepers if _visible(scope, k)]
    return json_response({"items": items})


def _want_from(request: Request) -> Want:
    try:
        body = request.json()
    except ValueError as exc:
        raise Problem(400, "validation_error", "the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise Problem(400, "validation_error", "the body must be a JSON object")
    errors: list[dict[str, str]] = []
    unknown = set(body) - {"licence_type", "count", "domain", "encoder_kind"}
    for name in sorted(unknown):
        errors.append({"field": name, "message": "unknown field"})
    licence_type, count, domain = body.get("licence_type"), body.get("count"), body.get("domain")
    kind = body.get("encoder_kind")
    if kind is not None and kind not in ENCODER_KINDS:
        errors.append({"field": "encoder_kind", "message": "hardware or container"})
    if not isinstance(licence_type, str) or not LICENCE_TYPE.fullmatch(licence_type):
        errors.append({"field": "licence_type", "message": "1–64 of a-z 0-9 -"})
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        errors.append({"field": "count", "message": f"an integer 1–{MAX_COUNT} (DELETE releases)"})
    if domain is not None and (not isinstance(domain, str) or not 1 <= len(domain) <= 64):
        errors.append({"field": "domain", "message": "a domain name, 1–64 characters"})
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise Problem(400, "validation_error", detail, errors=errors)
    assert isinstance(licence_type, str) and isinstance(count, int)
    return Want(licence_type, count, domain, kind)


async def put_lease(host: Host, request: Request, scope: Scope, serial: str) -> Response:
    wait = _float_query(request, "wait", 0.0)
    want = _want_from(request)
    _authorise(scope, serial, host.runner.get(serial), want)
    if host.bindings().get(want.domain) is None:
        what = f'domain "{want.domain}"' if want.domain else "this host"
        raise Problem(409, "not_enrolled", f"{what} is not enrolled: run tenure-agent enroll")
    keeper = await host.runner.want(serial, want)
    deadline = host.clock.monotonic() + wait
    while keeper.state() == "pending" and (left := deadline - host.clock.monotonic()) > 0:
        await keeper.wait_changed(keeper.version, left)
    return json_response(keeper.view())


async def get_lease(host: Host, request: Request, scope: Scope, serial: str) -> Response:
    wait = _float_query(request, "wait", 0.0)
    keeper = _keeper_or_404(host, serial, scope)
    raw_version = request.query.get("version")
    if wait and raw_version is not None:
        # ASCII digits only: int() would also read "٣" or "３" as 3.
        if not (raw_version.isascii() and raw_version.isdigit() and len(raw_version) <= 18):
            raise Problem(400, "validation_error", "'version' must be a whole number")
        await keeper.wait_changed(int(raw_version), wait)
        keeper = _keeper_or_404(host, serial, scope)
    return json_response(keeper.view())


async def release_binding(host: Host, request: Request, server_id: str) -> Response:
    # Only who could rewrite bindings.json anyway may empty a whole binding of its leases.
    caller = _caller(request)
    if caller is None or caller.uid not in (0, os.geteuid()):
        raise Problem(403, "forbidden", "only root or the agent's own user may release a binding's leases")
    wait = _float_query(request, "wait", 10.0)
    outcome = await host.hand_back(server_id, wait)
    if outcome is None:
        raise Problem(404, "not_found", f"no binding {server_id} on this agent")
    return json_response(dataclasses.asdict(outcome))


async def delete_lease(host: Host, request: Request, scope: Scope, serial: str) -> Response:
    wait = _float_query(request, "wait", 10.0)
    _keeper_or_404(host, serial, scope)
    keeper = await host.runner.withdraw(serial)
    assert keeper is not None
    if wait:
        deadline = host.clock.monotonic() + wait
        while not keeper.finished and (left := deadline - host.clock.monotonic()) > 0:
            await keeper.wait_changed(keeper.version, left)
    state = "released" if keeper.finished else "releasing"
    return json_response({"encoder": serial, "state": state})


Plain = Callable[[Host, Request, Scope], Awaitable[Response]]
PerEncoder = Callable[[Host, Request, Scope, str], Awaitable[Response]]

ROUTES: dict[str, dict[str, Plain]] = {
    "/v1/status": {"GET": get_status},
    "/v1/encoders": {"GET": list_encoders},
}
ENCODER_LEASE = re.compile(r"/v1/encoders/([^/]+)/lease")
ENCODER_ROUTES: dict[str, PerEncoder] = {"PUT": put_lease, "GET": get_lease, "DELETE": delete_lease}
BINDING_RELEASE = re.compile(r"/v1/bindings/([A-Za-z0-9_-]{1,128})/release")


def _not_allowed(request: Request, allowed: Iterable[str]) -> Problem:
    methods = sorted(allowed)
    return Problem(405, "method_not_allowed", f"{request.method} is not allowed here (only {', '.join(methods)})")


def _caller(request: Request) -> Caller | None:
    transport = request.transport
    return peer_credentials(transport.get_extra_info("socket") if transport is not None else None)


def _scope(host: Host, request: Request) -> Scope:
    """What the process on the other end may act for; 403 if nothing at all."""
    access = host.config.local_api
    if not access.allow:
        return access.scope(None)  # no rules: the socket's permissions are the fence
    scope = access.scope(_caller(request))
    if not scope.anything:
        raise Problem(
            403,
            "forbidden",
            f"{scope.who()} may not use this agent's local API (the agent's [local_api] allow rules)",
        )
    return scope


async def dispatch(host: Host, request: Request) -> Response:
    """Route ``request`` to its handler; every error comes back as a problem document."""
    try:
        scope = _scope(host, request)
        path = request.path
        plain = ROUTES.get(path)
        if plain is not None:
            handler = plain.get(request.method)
            if handler is None:
                raise _not_allowed(request, plain)
            return await handler(host, request, scope)
        match = ENCODER_LEASE.fullmatch(path)
        if match is not None:
            per_encoder = ENCODER_ROUTES.get(request.method)
            if per_encoder is None:
                raise _not_allowed(request, ENCODER_ROUTES)
            return await per_encoder(host, request, scope, _serial(match.group(1)))
        match = BINDING_RELEASE.fullmatch(path)
        if match is not None:
            if request.method != "POST":
                raise _not_allowed(request, ["POST"])
            return await release_binding(host, request, match.group(1))
        raise Problem(404, "not_found", "Not Found")
    except Problem as exc:
        return _problem(exc.status, exc.code, exc.detail, **exc.extra)


def _claim_socket(path: Path) -> None:
    """Remove a stale socket file; refuse if another agent is listening on it."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"another tenure-agent is serving on {path}")


class LocalServer:
    """The local API listening on a Unix socket with the configured mode and group."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.path = host.config.socket
        self._server = Server(lambda request: dispatch(host, request), _problem, max_body=MAX_BODY)
        self._listener: asyncio.Server | None = None

    @property
    def busy(self) -> int:
        """How many requests are being handled (long polls included)."""
        return self._server.busy

    @property
    def serving(self) -> bool:
        return self._listener is not None

    async def start(self) -> None:
        config = self.host.config
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _claim_socket(self.path)
        # Create the socket with no more access than it will finally have.
        old_umask = os.umask(0o777 & ~config.socket_mode)
        try:
            self._listener = await asyncio.get_running_loop().create_unix_server(self._server, str(self.path))
        finally:
            os.umask(old_umask)
        if config.socket_group:
            os.chown(self.path, -1, grp.getgrnam(config.socket_group).gr_gid)
        os.chmod(self.path, config.socket_mode)
        for name in config.local_api.unknown_names():
            log.warning("[local_api] allow names %s, which this host does not know: it matches no caller", name)

    async def stop(self, *, grace: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop listening, close idle connections, give requests in progress ``grace``
        seconds of the host's clock to finish, then cut them."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            await asyncio.sleep(0)  # let requests already accepted start
            self._server.close_idle()
            await wait_event(self.host.clock, self._server.idle, grace)
            await self._server.cut(CUT_TIMEOUT)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
