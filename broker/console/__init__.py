"""The admin console at ``/console/``: static assets and the session endpoints.

The console is plain HTML, native JavaScript modules (``console.js``, the entry point,
and ``js/**``) and one stylesheet, served from this package (no CDN, no build step). Each
file under ``static/`` gets its own fixed route when the app is made: no URL is ever
mapped onto the file system, so ``..`` or an encoded slash cannot reach outside the folder.
The page calls the ``/v1`` JSON API with a session cookie instead of a bearer token:

- ``POST /console/session`` ``{"token": "tnr_adm_…"}`` checks an admin token and answers
  with a session cookie (HttpOnly, SameSite=Strict, Path=/; Secure over TLS, or when a
  proxy in ``trusted_proxies`` says ``X-Forwarded-Proto: https``) and the session's CSRF token.
  Only admin tokens sign in: the operator has no estate to show.
- ``GET /console/session`` tells the page whether it is signed in, and gives it the CSRF
  token again after a reload (a cross-site page cannot read this answer). It answers
  401 ``session_ended`` when the request carries a session cookie that names no live
  session (it sat idle, ran out, was signed out or its admin removed), so the page can say
  why the admin must sign in again; plain 401 ``unauthenticated`` without a cookie.
  (The ``/v1`` routes answer such a cookie 401 ``unauthenticated``, as any dead
  credential, with the same explanation as detail: the page knows it was signed in.)
- The session answer's ``broker_url`` is the ``public_url`` setting, or null when it is
  unset: the page then warns that the enrol command it shows carries the address the
  console was opened at.
- ``DELETE /console/session`` signs out: the session is gone from the broker.

Sessions live in the database (``broker.console.sessions``): signed in through one
broker, an admin carries on through any other on the same database, and across restarts.

``broker.api.http.authenticate`` asks :func:`session_digest` (through the app key
``SESSION_LOOKUP``) when a request has no ``Authorization`` header; for POST, PATCH and
DELETE the ``X-CSRF-Token`` header must carry the session's CSRF token, else 403
``csrf_failed``.
"""

from __future__ import annotations

import hmac
import logging
import re
from pathlib import Path

from aiohttp import web

from broker.api.client import via_trusted_proxy
from broker.api.http import SESSION_LOOKUP, Handler, parse_json, read_body, services
from broker.api.schema import obj
from broker.console.sessions import MAX_SECONDS, SessionStore
from broker.errors import Forbidden, TenureError, Unauthenticated, ValidationFailed
from broker.ids import token_hash
from shared.timefmt import format_ts

log = logging.getLogger("tenure.console")

COOKIE = "tenure_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
SIGN_IN = obj({"token": {"type": "string", "minLength": 1, "maxLength": 512}})


class CsrfFailed(Forbidden):
    code, title = "csrf_failed", "CSRF token missing or wrong"


class SessionEnded(Unauthenticated):
    code, title = "session_ended", "The console session has ended"


SESSION_ENDED = "Your session ended (you were signed out for inactivity or after 12 hours). Sign in again."


class UnsupportedMediaType(TenureError):
    status, code, title = 415, "unsupported_media_type", "Send JSON"


def setup(app: web.Application) -> None:
    """Serve the console under ``/console/`` and let the API accept its session cookie."""
    app[SESSION_LOOKUP] = session_digest
    app.router.add_get("/console", _to_console, name="console_redirect")
    app.router.add_get("/console/session", session_info, name="console_session_info")
    app.router.add_post("/console/session", sign_in, name="console_sign_in")
    app.router.add_delete("/console/session", sign_out, name="console_sign_out")
    assets = static_assets()
    app.router.add_get("/console/", _asset(assets["index.html"]), name="console_index")
    for name, path in assets.items():
        if name != "index.html":
            app.router.add_get(f"/console/{name}", _asset(path), name="console_" + re.sub(r"\W", "_", name))


def static_assets(root: Path = STATIC) -> dict[str, Path]:
    """The files the console serves, keyed by their path under ``root`` (``js/pages/pool.js``).

    Only files of a known type, and nothing hidden (an editor's swap file, say).
    """
    assets: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and path.suffix in _TYPES and not any(p.startswith(".") for p in rel.split("/")):
            assets[rel] = path
    return assets


def session_store(request: web.Request) -> SessionStore:
    """The console sessions, in the broker's database."""
    return SessionStore(services(request).store)


async def session_digest(request: web.Request) -> tuple[bytes, str] | None:
    """The admin token digest behind the request's session cookie, and the session id; None without a cookie.

    Raises 401 when the cookie names no live session, and 403 ``csrf_failed`` when a
    state-changing request does not carry the session's CSRF token.
    """
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    session = await session_store(request).get(session_id, services(request).clock.now())
    if session is None:
        raise Unauthenticated(SESSION_ENDED)
    if request.method not in SAFE_METHODS and not session.csrf_matches(request.headers.get(CSRF_HEADER)):
        raise CsrfFailed(f"A state-changing request from the console must carry the {CSRF_HEADER} header.")
    return session.token_hash, session_id


def _harden(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/console/")


def _asset(path: Path) -> Handler:
    body = path.read_bytes()  # read once: a handful of small files
    content_type = _TYPES[path.suffix]

    async def serve(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=body, content_type=content_type, charset="utf-8")
        response.headers["Cache-Control"] = "no-cache"
        return _harden(response)

    return serve


def _describe(request: web.Request, csrf_token: str, expires_at: float) -> web.Response:
    svc = services(request)
    response = web.json_response(
        {
            "csrf_token": csrf_token,
            "expires_at": format_ts(expires_at),
            "broker_url": svc.config.public_url,
        }
    )
    _harden(response)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    if request.content_type != "application/json":
        # A cross-site form cannot send JSON without a CORS preflight, which we never allow.
        raise UnsupportedMediaType('Sign in with a JSON body: {"token": "tnr_adm_…"}.')
    body = parse_json(await read_body(request), SIGN_IN)
    token = body["token"].strip()
    if not token:
        raise ValidationFailed([{"field": "token", "message": "must not be empty"}])
    svc = services(request)
    digest = token_hash(token)
    if hmac.compare_digest(digest, svc.operator_hash):
        raise Forbidden("The console is for estate admins; the operator token cannot sign in.")
    principal = await svc.principals.resolve(digest)
    if principal is None:
        raise Unauthenticated("That admin token is unknown or has been revoked.")
    if principal.kind != "admin":
        raise Forbidden(f"A {principal.kind} token cannot sign in to the console; use an admin token.")
    store = session_store(request)
    old = request.cookies.get(COOKIE)
    if old:
        await store.close(old)  # a fresh id on every sign-in: no session fixation
    now = svc.clock.now()
    session_id, session = await store.open(digest, now)
    log.info("console sign-in by admin %s of estate %s", principal.admin_id, principal.estate_id)
    response = _describe(request, session.csrf_token, session.expires_at())
    response.set_cookie(
        COOKIE, session_id, path="/", httponly=True, samesite="Strict", secure=_over_tls(request), max_age=MAX_SECONDS
    )
    return response


def _over_tls(request: web.Request) -> bool:
    """TLS here, or at a reverse proxy the operator trusts (``trusted_proxies``)."""
    if request.secure:
        return True
    if not via_trusted_proxy(request, services(request).config.trusted_proxies):
        return False
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https"


async def session_info(request: web.Request) -> web.StreamResponse:
    session_id = request.cookies.get(COOKIE)
    now = services(request).clock.now()
    if not session_id:
        raise Unauthenticated("Not signed in to the console.")
    session = await session_store(request).get(session_id, now)
    if session is None:
        # The browser still holds a cookie we gave it: say why it no longer works.
        raise SessionEnded(SESSION_ENDED)
    return _describe(request, session.csrf_token, session.expires_at())


async def sign_out(request: web.Request) -> web.StreamResponse:
    session_id = request.cookies.get(COOKIE)
    store = session_store(request)
    session = await store.get(session_id, services(request).clock.now()) if session_id else None
    if session is not None and session_id:
        if not session.csrf_matches(request.headers.get(CSRF_HEADER)):
            raise CsrfFailed(f"Signing out must carry the {CSRF_HEADER} header.")
        await store.close(session_id)
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/", secure=_over_tls(request), httponly=True, samesite="Strict")
    return _harden(response)
