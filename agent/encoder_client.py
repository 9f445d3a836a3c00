"""A small client for encoder software: the agent's local API over its Unix socket.

Standard library only, synchronous, safe to copy into an encoder's own code base::

    from agent.encoder_client import EncoderClient

    agent = EncoderClient()                      # /run/tenure-agent/agent.sock
    lease = agent.acquire("ENC-0042", "one-in-one-out", 4)
    for lease in agent.watch("ENC-0042"):        # returns at once on every change
        if lease.usable:
            run_cameras(lease.count, lease.token)
        else:
            stop_cameras(lease.state)            # lost, revoked, denied, pending
    agent.release("ENC-0042")

A lease is ``usable`` while its state is ``active`` or ``offline`` (the broker is away
but the lease has not expired). See docs/encoder-integration.md.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_SOCKET = Path(os.environ.get("TENURE_AGENT_SOCKET", "/run/tenure-agent/agent.sock"))
USABLE_STATES = frozenset({"active", "offline"})


class EncoderClientError(Exception):
    """The agent could not be asked, or said no."""


class AgentNotRunning(EncoderClientError):
    """Nothing listens on the socket: the agent service is not running."""


class AgentRefused(EncoderClientError):
    """The agent answered with an error (``status``, ``code``, ``detail``)."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(detail or code)
        self.status, self.code, self.detail, self.body = status, code, detail, body


@dataclass(frozen=True)
class LeaseStatus:
    """One encoder's lease as the agent reports it."""

    encoder: str
    state: str
    version: int
    licence_type: str | None = None
    count: int = 0
    token: str | None = field(default=None, repr=False)
    expires_at: str | None = None
    expires_in: int | None = None
    error_code: str | None = None
    error_detail: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def usable(self) -> bool:
        """True while the encoder may run on this lease."""
        return self.state in USABLE_STATES and self.token is not None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseStatus:
        lease = data.get("lease") or {}
        wanted = data.get("wanted") or {}
        error = data.get("error") or {}
        return cls(
            encoder=str(data.get("encoder", "")),
            state=str(data.get("state", "")),
            version=int(data.get("version", 0)),
            licence_type=lease.get("licence_type") or wanted.get("licence_type"),
            count=int(lease.get("count", 0)),
            token=lease.get("token"),
            expires_at=lease.get("expires_at"),
            expires_in=lease.get("expires_in"),
            error_code=error.get("code"),
            error_detail=error.get("detail"),
            raw=data,
        )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class EncoderClient:
    """Talks to the agent on this host. Each call opens one short connection."""

    def __init__(self, socket_path: str | Path = DEFAULT_SOCKET, *, timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, wait: float = 0
    ) -> tuple[int, Any]:
        conn = _UnixConnection(str(self.socket_path), self.timeout + wait)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise AgentNotRunning(f"the agent service is not running (no socket at {self.socket_path})") from exc
            except PermissionError as exc:
                raise EncoderClientError(
                    f"permission denied on {self.socket_path}: this user must be in the socket's group"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise EncoderClientError(f"the agent did not answer: {exc}") from exc
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError as exc:
            raise EncoderClientError("the agent sent something that is not JSON") from exc
        if resp.status >= 400:
            problem = data if isinstance(data, dict) else {}
            raise AgentRefused(
                resp.status,
                str(problem.get("code", f"http_{resp.status}")),
                str(problem.get("detail", "")),
                problem,
            )
        return resp.status, data

    @staticmethod
    def _path(encoder: str, **query: Any) -> str:
        path = f"/v1/encoders/{quote(encoder, safe='')}/lease"
        params = {k: v for k, v in query.items() if v is not None}
        return path + ("?" + urlencode(params) if params else "")

    def status(self, *, probe: bool = False) -> dict[str, Any]:
        """The agent's bindings, broker reachability and encoders (no tokens)."""
        _, data = self._request("GET", "/v1/status" + ("?probe=1" if probe else ""), wait=5)
        return dict(data)

    def acquire(
        self,
        encoder: str,
        licence_type: str,
        count: int,
        *,
        domain: str | None = None,
        encoder_kind: str | None = None,
        wait: float = 30.0,
    ) -> LeaseStatus:
        """Ask for ``count`` licences of ``licence_type``; waits up to ``wait`` seconds
        for the broker's answer (the state stays ``pending`` if it has none yet).
        ``encoder_kind`` (``hardware`` or ``container``) tells the broker which soft-lock
        window applies to the encoder."""
        body: dict[str, Any] = {"licence_type": licence_type, "count": count}
        if domain is not None:
            body["domain"] = domain
        if encoder_kind is not None:
            body["encoder_kind"] = encoder_kind
        _, data = self._request("PUT", self._path(encoder, wait=wait), body, wait=wait)
        return LeaseStatus.from_json(data)

    def lease(self, encoder: str, *, wait: float = 0, version: int | None = None) -> LeaseStatus | None:
        """The encoder's lease; with ``wait`` and ``version``, waits for a newer one.

        Returns None when the encoder has asked for no lease.
        """
        try:
            _, data = self._request(
                "GET",
                self._path(encoder, wait=wait or None, version=version),
                wait=wait,
            )
        except AgentRefused as exc:
            if exc.status == 404:
                return None
            raise
        return LeaseStatus.from_json(data)

    def release(self, encoder: str, *, wait: float = 10.0) -> str:
        """Give the lease back: ``"released"``, or ``"releasing"`` while the broker is away.

        Returns ``"none"`` if the encoder held nothing.
        """
        try:
            _, data = self._request("DELETE", self._path(encoder, wait=wait), wait=wait)
        except AgentRefused as exc:
            if exc.status == 404:
                return "none"
            raise
        return str(data.get("state", ""))

    def watch(self, encoder: str, *, poll: float = 30.0) -> Iterator[LeaseStatus]:
        """Yield the encoder's lease now and again on every change, until it wants none."""
        version: int | None = None
        while True:
            lease = self.lease(encoder, wait=poll if version is not None else 0, version=version)
            if lease is None:
                return
            if lease.version != version:
                yield lease
            version = lease.version
