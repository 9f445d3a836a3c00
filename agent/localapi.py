"""The local API: HTTP over a Unix socket, for encoder software on this host.

Routes (documented in docs/encoder-integration.md):

- ``GET    /v1/status``                           bindings, broker reachability, encoders
- ``GET    /v1/encoders``                         every encoder's lease (without tokens)
- ``PUT    /v1/encoders/{serial}/lease``          ``{licence_type, count, domain?}``
- ``GET    /v1/encoders/{serial}/lease``          ``?wait=S&version=N`` long-polls a change
- ``DELETE /v1/encoders/{serial}/lease``          release; ``?wait=S`` waits for the broker

Access is by file permissions on the socket (mode 0660 by default). Errors are
``application/problem+json`` with a ``code``, as the broker's.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.keeper import Keeper
from agent.service import Agent
from agent.state import Want

log = logging.getLogger(__name__)

AGENT = web.AppKey("agent", Agent)

SERIAL = re.compile(r"[A-Za-z0-9._:-]{1,128}")
LICENCE_TYPE = re.compile(r"[a-z0-9-]{1,64}")
MAX_COUNT = 10_000
MAX_WAIT = 300.0


class Problem(Exception):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def _problem(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    body = {
        "type": "about:blank",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return web.json_response(body, status=status, content_type="application/problem+json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        return _problem(exc.status, exc.code, exc.detail, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status, "bad_request")
        return _problem(exc.status, code, exc.reason)


def _serial(request: web.Request) -> str:
    serial = request.match_info["serial"]
    if not SERIAL.fullmatch(serial):
        raise Problem(400, "validation_error", "encoder serial must be 1–128 of A-Z a-z 0-9 . _ : -")
    return serial


def _float_query(request: web.Request, name: str, default: float) -> float:
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


def _keeper_or_404(agent: Agent, serial: str) -> Keeper:
    keeper = agent.runner.get(serial)
    if keeper is None or keeper.record.want is None:
        raise Problem(404, "not_found", f"encoder {serial} has asked for no lease")
    return keeper


async def get_status(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    probe = request.query.get("probe", "") in ("1", "true", "yes")
    return web.json_response(await agent.status(probe=probe))


async def list_encoders(request: web.Request) -> web.Response:
    runner = request.app[AGENT].runner
    items = [runner.keepers[s].view(with_token=False) for s in sorted(runner.keepers)]
    return web.json_response({"items": items})


async def _want_from(request: web.Request) -> Want:
    try:
        body = await request.json()
    except ValueError as exc:
        raise Problem(400, "validation_error", "the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise Problem(400, "validation_error", "the body must be a JSON object")
    errors: list[dict[str, str]] = []
    unknown = set(body) - {"licence_type", "count", "domain"}
    for name in sorted(unknown):
        errors.append({"field": name, "message": "unknown field"})
    licence_type, count, domain = body.get("licence_type"), body.get("count"), body.get("domain")
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
    return Want(licence_type, count, domain)


async def put_lease(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    serial = _serial(request)
    wait = _float_query(request, "wait", 0.0)
    want = await _want_from(request)
    if agent.bindings().get(want.domain) is None:
        what = f'domain "{want.domain}"' if want.domain else "this host"
        raise Problem(409, "not_enrolled", f"{what} is not enrolled: run tenure-agent enroll")
    keeper = await agent.runner.want(serial, want)
    deadline = agent.clock.now() + wait
    while keeper.state() == "pending" and (left := deadline - agent.clock.now()) > 0:
        await keeper.wait_changed(keeper.version, left)
    return web.json_response(keeper.view())


async def get_lease(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    serial = _serial(request)
    wait = _float_query(request, "wait", 0.0)
    keeper = _keeper_or_404(agent, serial)
    raw_version = request.query.get("version")
    if wait and raw_version is not None:
        try:
            version = int(raw_version)
        except ValueError as exc:
            raise Problem(400, "validation_error", "'version' must be an integer") from exc
        await keeper.wait_changed(version, wait)
        keeper = _keeper_or_404(agent, serial)
    return web.json_response(keeper.view())


async def delete_lease(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    serial = _serial(request)
    wait = _float_query(request, "wait", 10.0)
    _keeper_or_404(agent, serial)
    keeper = await agent.runner.drop(serial)
    assert keeper is not None
    if wait:
        deadline = agent.clock.now() + wait
        while not keeper.finished.is_set() and (left := deadline - agent.clock.now()) > 0:
            await keeper.wait_changed(keeper.version, left)
    state = "released" if keeper.finished.is_set() else "releasing"
    return web.json_response({"encoder": serial, "state": state})


def create_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[problems], client_max_size=64 * 1024)
    app[AGENT] = agent
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/encoders", list_encoders)
    app.router.add_put("/v1/encoders/{serial}/lease", put_lease)
    app.router.add_get("/v1/encoders/{serial}/lease", get_lease)
    app.router.add_delete("/v1/encoders/{serial}/lease", delete_lease)
    return app


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

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.path = agent.config.socket
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        config = self.agent.config
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _claim_socket(self.path)
        self._runner = web.AppRunner(create_app(self.agent), access_log=None)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(self.path))
        # Create the socket with no more access than it will finally have.
        old_umask = os.umask(0o777 & ~config.socket_mode)
        try:
            await site.start()
        finally:
            os.umask(old_umask)
        if config.socket_group:
            os.chown(self.path, -1, grp.getgrnam(config.socket_group).gr_gid)
        os.chmod(self.path, config.socket_mode)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
