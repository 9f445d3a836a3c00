"""The broker's agent API: one method per endpoint (the agent endpoints of docs/design.md).

Every failure comes out as an ``agent.errors`` exception: transport errors, timeouts,
429 and 5xx as ``BrokerUnavailable`` (retryable, with ``retry_after`` when the broker
said), a garbled answer likewise (a 4xx that is not a problem document too: it is not
the broker speaking), and other 4xx as a final ``BrokerRefused`` carrying the problem
document's ``code``. Redirects are never followed: a 3xx is ``BrokerUnavailable`` too,
saying where it pointed (a server token goes to the broker it was enrolled with and
nowhere else; the broker itself never redirects its API). Nothing here retries: that
is the keeper's business (``agent/keeper.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import socket
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from agent.config import is_loopback
from agent.errors import BrokerRefused, BrokerUnavailable
from shared import __version__
from shared.secret import Secret
from shared.wire import Lease

USER_AGENT = f"tenure-agent/{__version__}"


def ssl_context(ca_file: Path | None) -> ssl.SSLContext | Literal[True]:
    """Certificate verification against the system store, or only ``ca_file``'s CAs.

    Without ``ca_file``: ``True``, aiohttp's own verified default context
    (``ssl.create_default_context()``, built when aiohttp is imported). A context of our
    own would parse the system CA store a second time and keep it resident: about 0.8 MB
    (docs/agent.md, "Footprint"). There is deliberately no way to turn verification off.
    """
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        from agent.errors import ConfigError

        raise ConfigError(f"setting 'ca_file': cannot load {ca_file}: {exc}") from exc


# A path the technician may copy from the browser or the API document: the console's, or
# an endpoint's. The broker's address is what comes before it.
_API_PATH = re.compile(r"(?P<base>.*?)/(?:console|v1)(?:/.*)?")
# OpenSSL's words for "the other end answered the handshake in plain text".
_PLAIN_TEXT = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG"})


def split_api_path(url: str) -> tuple[str, str]:
    """``https://b.example/console/`` → (``https://b.example``, ``/console/``).

    The broker's address, without a console or ``/v1`` path that was typed after it,
    and what was left out ("" if nothing). A prefix before it (a broker served under
    ``/tenure`` by a proxy) stays.
    """
    parts = urlsplit(url.strip())
    match = _API_PATH.fullmatch(parts.path)
    if match is None:
        return url.strip(), ""
    base = urlunsplit(parts._replace(path=match.group("base")))
    return base, parts.path[len(match.group("base")) :]


def _not_https(url: str) -> str:
    """The reason given when the server at ``url`` answers TLS in plain text."""
    parts = urlsplit(url)
    if parts.hostname and is_loopback(parts.hostname):
        plain = urlunsplit(parts._replace(scheme="http"))
        return f"it does not speak HTTPS; use {plain} (plain http is fine on this host)"
    return "it does not speak HTTPS (is the port right? ask for the broker's https:// address)"


def _reason(exc: BaseException, timeout: float, url: str) -> str:
    """A short, human reason for a transport failure."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        text = getattr(cert_error, "verify_message", None) or str(cert_error)
        return f"TLS certificate not trusted ({text})"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        if getattr(exc.os_error, "reason", None) in _PLAIN_TEXT:
            return _not_https(url)
        return f"TLS handshake failed ({exc.os_error})"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name not found"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return "host name not found"
        if os_error.errno == errno.ECONNREFUSED:
            return "connection refused"
        return os_error.strerror or str(os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the broker closed the connection"
    if isinstance(exc, aiohttp.ClientError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _redirected(status: int, location: str) -> str:
    """One line for a redirect, which the agent never follows."""
    where = f" to {location[:200]}" if location else ""
    return (
        f"it answered with a redirect (HTTP {status}{where}); the agent follows no redirects: give the broker's own URL"
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class BrokerClient:
    """Talks to one broker. Create inside a running event loop; ``close()`` when done."""

    def __init__(self, base_url: str, *, ca_file: Path | None = None, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._ssl = ssl_context(ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    def _open_streams(self) -> aiohttp.ClientSession:
        """The event streams' own connections: each holds one for as long as it is open,
        and however many bindings stream, none may take a connection the calls need."""
        if self._streams is None or self._streams.closed:
            self._streams = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                headers={"User-Agent": USER_AGENT},
            )
        return self._streams

    async def close(self) -> None:
        for session in (self._session, self._streams):
            if session is not None:
                await session.close()
        self._session = self._streams = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        token: Secret | None = None,
        body: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.reveal()}"
        url = self.base_url + path
        try:
            async with self._open().request(method, url, json=body, headers=headers, allow_redirects=False) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                location = resp.headers.get("Location", "")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BrokerUnavailable(self.base_url, _reason(exc, self.timeout, self.base_url)) from exc
        return self._judge(status, raw, retry_after, location)

    def _judge(self, status: int, raw: bytes, retry_after: float | None, location: str) -> tuple[int, Any]:
        """The answer's status and JSON body, or the ``agent.errors`` exception it means."""
        data: Any = None
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
        if 300 <= status < 400:
            raise BrokerUnavailable(self.base_url, _redirected(status, location))
        if status < 400:
            return status, data
        problem = data if isinstance(data, dict) else {}
        code = problem.get("code")
        if status == 429:
            raise BrokerUnavailable(self.base_url, "rate limited", retry_after=retry_after)
        if status >= 500:
            shown = code if isinstance(code, str) else "not the broker's answer"
            raise BrokerUnavailable(self.base_url, f"HTTP {status} ({shown})", retry_after=retry_after)
        if not isinstance(code, str):
            # The broker words every refusal as a problem document with a code. A bare
            # 4xx (an HTML page from a proxy or captive portal in the way) is not its
            # word: a final refusal on its strength would drop a valid lease.
            raise BrokerUnavailable(self.base_url, f"HTTP {status} that is not the broker's answer")
        raise BrokerRefused(code, status, problem)

    def _garbled(self, what: str, exc: Exception | None = None) -> BrokerUnavailable:
        reason = f"unexpected answer to {what}" + (f" ({exc})" if exc else "")
        return BrokerUnavailable(self.base_url, reason)

    # ------------------------------------------------------------------ endpoints

    async def enroll(self, code: str, name: str, kind: str) -> dict[str, Any]:
        """``POST /v1/enroll``: redeem an authentication code for a server token."""
        _, data = await self._call("POST", "/v1/enroll", body={"code": code, "name": name, "kind": kind})
        required = ("server_id", "server_token", "estate_id", "pool_id", "keys")
        if not isinstance(data, dict) or any(k not in data for k in required):
            raise self._garbled("enrol")
        return data

    async def acquire(
        self, token: Secret, encoder: str, licence_type: str, count: int, encoder_kind: str | None = None
    ) -> Lease | None:
        """``POST /v1/leases``: acquire, grow, shrink or change the encoder's lease.

        ``count=0`` releases whatever the encoder holds and returns None. ``encoder_kind``
        (``hardware`` or ``container``) picks the pool's soft-lock window; None sends none.
        """
        body: dict[str, Any] = {"encoder": encoder, "licence_type": licence_type, "count": count}
        if encoder_kind is not None:
            body["encoder_kind"] = encoder_kind
        status, data = await self._call("POST", "/v1/leases", token=token, body=body)
        if status == 204 or count == 0:
            return None
        return self._lease(data, "acquire")

    async def renew(self, token: Secret, lease_id: str) -> Lease:
        """``POST /v1/leases/{id}/renew``: a new token with a later expiry."""
        _, data = await self._call("POST", f"/v1/leases/{lease_id}/renew", token=token, body={})
        return self._lease(data, "renew")

    async def release(self, token: Secret, lease_id: str) -> None:
        """``DELETE /v1/leases/{id}`` (idempotent)."""
        await self._call("DELETE", f"/v1/leases/{lease_id}", token=token)

    async def keys(self) -> dict[str, Any]:
        """``GET /v1/keys``: the broker's lease-signing keys (JWKS)."""
        _, data = await self._call("GET", "/v1/keys")
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise self._garbled("keys")
        return data

    async def me(self, token: Secret) -> dict[str, Any]:
        """``GET /v1/me``: what the server token is; 401 once the server is removed."""
        _, data = await self._call("GET", "/v1/me", token=token)
        if not isinstance(data, dict):
            raise self._garbled("me")
        return data

    async def stream(self, token: Secret, last_event_id: str | None) -> aiohttp.ClientResponse:
        """``GET /v1/stream``: the open event stream, to be read and closed by the caller
        (``agent/stream.py``). Only the answer's head must come within the timeout; the
        body has none (the caller notices a dead stream by its heartbeats stopping)."""
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token.reveal()}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        url = self.base_url + "/v1/stream"
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._open_streams().get(url, headers=headers, allow_redirects=False)
                if resp.status == 200 and resp.content_type == "text/event-stream":
                    return resp
                with contextlib.closing(resp):
                    raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BrokerUnavailable(self.base_url, _reason(exc, self.timeout, self.base_url)) from exc
        self._judge(resp.status, raw, _retry_after(resp.headers.get("Retry-After")), resp.headers.get("Location", ""))
        raise self._garbled("stream")

    def _lease(self, data: Any, what: str) -> Lease:
        try:
            return Lease.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise self._garbled(what, exc) from exc
