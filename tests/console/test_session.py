"""Console sessions, cookies, CSRF and CSP against the real app (no browser needed)."""

from __future__ import annotations

import datetime
import re
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.app import create_app
from broker.console import COOKIE, CSP
from broker.console.sessions import IDLE_SECONDS, MAX_SECONDS, SessionStore
from broker.services import SERVICES
from tests.conftest import Broker


async def sign_in(broker: Broker, token: str) -> tuple[str, str]:
    """Sign in; the session cookie's value and the CSRF token."""
    r = await broker.client.post("/console/session", json={"token": token})
    assert r.status == 200, await r.text()
    body = await r.json()
    return r.cookies[COOKIE].value, body["csrf_token"]


async def admin_estate(broker: Broker) -> tuple[str, str]:
    est = await broker.estate()
    await broker.purchase(est["id"], quantity=10)
    return est["id"], est["admin_token"]


async def test_sign_in_sets_a_hardened_session_cookie(broker: Broker) -> None:
    _, admin = await admin_estate(broker)
    r = await broker.client.post("/console/session", json={"token": admin})
    assert r.status == 200
    body = await r.json()
    assert set(body) == {"csrf_token", "expires_at", "broker_url"}
    header = r.headers["Set-Cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in header.split(";")}
    assert {"httponly", "path", "samesite", "max-age"} <= attrs
    assert "SameSite=Strict" in header and "Path=/" in header
    assert "secure" not in attrs  # plain http here; see the TLS test
    assert admin not in header and body["csrf_token"] not in header
    assert r.headers["Content-Security-Policy"] == CSP


async def test_session_cookie_stands_in_for_the_admin_token(broker: Broker) -> None:
    estate_id, admin = await admin_estate(broker)
    cookie, csrf = await sign_in(broker, admin)
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    me = await broker.call("GET", "/v1/me", headers=jar, status=200)
    assert me["kind"] == "admin" and me["estate_id"] == estate_id
    problem = await broker.call("POST", f"/v1/estates/{estate_id}/pools", json={"name": "A"}, headers=jar, status=403)
    assert problem["code"] == "csrf_failed"
    problem = await broker.call(
        "POST",
        f"/v1/estates/{estate_id}/pools",
        json={"name": "A"},
        headers={**jar, "X-CSRF-Token": csrf + "x"},
        status=403,
    )
    assert problem["code"] == "csrf_failed"
    for method in ("PATCH", "DELETE"):
        problem = await broker.call(
            method, f"/v1/estates/{estate_id}/pools/pool_x", json={"name": "B"}, headers=jar, status=403
        )
        assert problem["code"] == "csrf_failed"
    pools = await broker.call("GET", f"/v1/estates/{estate_id}/pools", headers=jar, status=200)
    assert [p["name"] for p in pools["items"]] == ["Default Pool"]
    created = await broker.call(
        "POST", f"/v1/estates/{estate_id}/pools", json={"name": "A"}, headers={**jar, "X-CSRF-Token": csrf}, status=201
    )
    assert created["name"] == "A"


async def test_a_bearer_token_needs_no_csrf_token(broker: Broker) -> None:
    estate_id, admin = await admin_estate(broker)
    cookie, _ = await sign_in(broker, admin)
    await broker.call(
        "POST", f"/v1/estates/{estate_id}/pools", admin, {"name": "A"}, 201, headers={"Cookie": f"{COOKIE}={cookie}"}
    )


async def test_only_admin_tokens_sign_in(broker: Broker) -> None:
    estate_id, admin = await admin_estate(broker)
    pool = await broker.call("POST", f"/v1/estates/{estate_id}/pools", admin, {"name": "P", "moves": []}, 201)
    default = (await broker.call("GET", f"/v1/estates/{estate_id}/pools", admin))["items"][0]
    await broker.call(
        "POST",
        f"/v1/estates/{estate_id}/moves",
        admin,
        {
            "from_pool": default["id"],
            "to_pool": pool["id"],
            "items": [{"purchase_id": default["holdings"][0]["purchase_id"], "count": 1}],
        },
        201,
    )
    code = await broker.call("POST", f"/v1/estates/{estate_id}/pools/{pool['id']}/auth-codes", admin, {}, 201)
    server = await broker.call("POST", "/v1/enroll", None, {"code": code["code"], "name": "h", "kind": "server"}, 201)
    cases: list[tuple[Any, int, str]] = [
        ({"token": broker.operator}, 403, "forbidden"),
        ({"token": server["server_token"]}, 403, "forbidden"),
        ({"token": "tnr_adm_" + "x" * 43}, 401, "unauthenticated"),
        ({"token": "   "}, 400, "validation_error"),
        ({}, 400, "validation_error"),
    ]
    for body, status, code_name in cases:
        r = await broker.client.post("/console/session", json=body)
        problem = await r.json()
        assert (r.status, problem["code"]) == (status, code_name), body
        assert COOKIE not in r.cookies


async def test_sign_in_takes_json_only(broker: Broker) -> None:
    _, admin = await admin_estate(broker)
    r = await broker.client.post("/console/session", data={"token": admin})
    assert r.status == 415 and COOKIE not in r.cookies


async def test_sign_out_ends_the_session_on_the_broker(broker: Broker) -> None:
    estate_id, admin = await admin_estate(broker)
    cookie, csrf = await sign_in(broker, admin)
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    r = await broker.client.delete("/console/session", headers=jar)
    assert r.status == 403 and (await r.json())["code"] == "csrf_failed"
    await broker.call("GET", "/v1/me", headers=jar, status=200)
    r = await broker.client.delete("/console/session", headers={**jar, "X-CSRF-Token": csrf})
    assert r.status == 204
    assert r.cookies[COOKIE].value == "" and r.cookies[COOKIE]["max-age"] == "0"
    problem = await broker.call("GET", f"/v1/estates/{estate_id}/pools", headers=jar, status=401)
    assert problem["code"] == "unauthenticated"
    r = await broker.client.get("/console/session", headers=jar)
    assert r.status == 401


async def test_sessions_end_when_idle_at_the_latest_after_the_cap(broker: Broker) -> None:
    _, admin = await admin_estate(broker)
    cookie, _ = await sign_in(broker, admin)
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    for _ in range(MAX_SECONDS // (IDLE_SECONDS - 60)):
        broker.clock.advance(IDLE_SECONDS - 60)  # used in time: the idle deadline moves on
        await broker.call("GET", "/v1/me", headers=jar, status=200)
    broker.clock.advance(IDLE_SECONDS - 60)  # past the absolute cap now
    await broker.call("GET", "/v1/me", headers=jar, status=401)
    cookie, _ = await sign_in(broker, admin)
    broker.clock.advance(IDLE_SECONDS)
    await broker.call("GET", "/v1/me", headers={"Cookie": f"{COOKIE}={cookie}"}, status=401)


async def test_a_removed_admins_session_stops_working(broker: Broker) -> None:
    estate_id, admin = await admin_estate(broker)
    other = await broker.call("POST", f"/v1/estates/{estate_id}/admins", admin, {"name": "Bob"}, 201)
    cookie, _ = await sign_in(broker, other["token"])
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    await broker.call("GET", "/v1/me", headers=jar, status=200)
    await broker.call("DELETE", f"/v1/estates/{estate_id}/admins/{other['id']}", admin, status=204)
    await broker.call("GET", "/v1/me", headers=jar, status=401)


async def test_an_unknown_cookie_is_refused(broker: Broker) -> None:
    problem = await broker.call("GET", "/v1/me", headers={"Cookie": f"{COOKIE}=forged"}, status=401)
    assert "session" in problem["detail"]


async def test_console_pages_carry_the_csp_and_no_inline_code(broker: Broker) -> None:
    r = await broker.client.get("/console", allow_redirects=False)
    assert r.status == 301 and r.headers["Location"] == "/console/"
    for path, kind in [
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ]:
        r = await broker.client.get(path)
        assert r.status == 200 and r.content_type == kind
        csp = r.headers["Content-Security-Policy"]
        assert csp == CSP and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    html = await (await broker.client.get("/console/")).text()
    assert "<script>" not in html and not re.search(r"\s(style|on[a-z]+)=", html)
    r = await broker.client.get("/console/nope.js")
    assert r.status == 404


async def test_the_session_table_is_bounded_per_admin_and_in_all(broker: Broker, monkeypatch: Any) -> None:
    from broker.console import sessions

    monkeypatch.setattr(sessions, "MAX_PER_ADMIN", 3)
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 4)
    _, alice = await admin_estate(broker)
    _, bob = await admin_estate(broker)
    alices = [await _sign_in_later(broker, alice) for _ in range(5)]
    live = [await _live(broker, c) for c in alices]
    assert live == [False, False, True, True, True]  # Alice's oldest two made way
    bobs = [await _sign_in_later(broker, bob) for _ in range(2)]
    # Five in all over a cap of four: the oldest of anyone's made way.
    assert [await _live(broker, c) for c in alices[2:] + bobs] == [False, True, True, True, True]
    store = SessionStore(broker.client.app[SERVICES].store)
    assert await store.store.read(lambda tx: tx.scalar("sessions_count")) == 4


async def _sign_in_later(broker: Broker, token: str) -> str:
    broker.clock.advance(1)  # "oldest" is by start time
    cookie = (await sign_in(broker, token))[0]
    broker.client.session.cookie_jar.clear()  # another browser each time: no sign-in replaces another
    return cookie


async def _live(broker: Broker, cookie: str) -> bool:
    r = await broker.client.get("/v1/me", headers={"Cookie": f"{COOKIE}={cookie}"})
    return r.status == 200


def _self_signed(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return context


async def test_the_cookie_is_secure_over_tls(
    tmp_path: Path,
    config_factory: Any,
    operator_token: str,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    server = await aiohttp_server(create_app(config_factory()), ssl=_self_signed(tmp_path))
    assert server.scheme == "https"
    async with aiohttp.ClientSession(base_url=server.make_url("/")) as http:
        r = await http.post(
            "/v1/estates",
            json={"name": "E", "admin_name": "A"},
            headers={"Authorization": f"Bearer {operator_token}"},
            ssl=False,
        )
        admin = (await r.json())["admin_token"]
        r = await http.post("/console/session", json={"token": admin}, ssl=False)
        assert r.status == 200
        assert "Secure" in r.headers["Set-Cookie"].split("; ")


async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(
    aiohttp_client: Callable[..., Awaitable[Any]],
    config_factory: Any,
    operator_token: str,
) -> None:
    # The test client connects from 127.0.0.1: trusted in the first case only.
    for trusted, secure in (("127.0.0.1/32", True), ("10.0.0.0/8", False), ("", False)):
        client = await aiohttp_client(create_app(config_factory(trusted_proxies=trusted)))
        r = await client.post(
            "/v1/estates", json={"name": "E", "admin_name": "A"}, headers={"Authorization": f"Bearer {operator_token}"}
        )
        admin = (await r.json())["admin_token"]
        r = await client.post("/console/session", json={"token": admin}, headers={"X-Forwarded-Proto": "https"})
        assert r.status == 200
        assert ("Secure" in r.headers["Set-Cookie"].split("; ")) is secure


async def test_a_cookie_of_no_live_session_says_the_session_ended(broker: Broker) -> None:
    _, admin = await admin_estate(broker)
    r = await broker.client.get("/console/session")
    assert r.status == 401 and (await r.json())["code"] == "unauthenticated"
    cookie, _ = await sign_in(broker, admin)
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    broker.clock.advance(IDLE_SECONDS)  # unused for two hours: over
    for path in ("/console/session", "/v1/me"):
        r = await broker.client.get(path, headers=jar)
        problem = await r.json()
        assert r.status == 401, path
        assert problem["detail"] == (
            "Your session ended (you were signed out for inactivity or after 12 hours). Sign in again."
        )
    r = await broker.client.get("/console/session", headers={"Cookie": f"{COOKIE}=never-issued"})
    assert r.status == 401 and (await r.json())["code"] == "session_ended"
