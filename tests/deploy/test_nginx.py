"""deploy/nginx/tenure.conf as nginx 1.22 (Debian 12) reads it: `nginx -t`, then a real
nginx in front of a real broker, answering with HSTS and the broker's request id."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.broker.sse import SseReader
from tests.deploy.conftest import DEPLOY, Broker, free_port, get, need, nginx_conf, unverified, with_test_certificate

CONF = DEPLOY / "nginx" / "tenure.conf"


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_nginx_t_accepts_the_example(tmp_path: Path) -> None:
    nginx = need("nginx")
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=True).stderr
    site = tmp_path / "tenure.conf"
    site.write_text(with_test_certificate(CONF.read_text(), tmp_path))  # only the certificate paths differ
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(nginx_conf(tmp_path, site))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, f"{version}{result.stderr}"
    assert "syntax is ok" in result.stderr


def test_the_example_says_nothing_nginx_1_22_does_not_know() -> None:
    text = CONF.read_text()
    assert not re.search(r"^\s*http2\s+on\s*;", text, re.M)  # 1.25.1 and later only
    assert re.search(r'add_header\s+Strict-Transport-Security\s+"max-age=\d+[^"]*"\s+always;', text)


@pytest.fixture
def proxied(tmp_path: Path, broker: Broker) -> Iterator[tuple[str, str, Path]]:
    """nginx with the example (ports, certificate and upstream made local) before ``broker``."""
    nginx = need("nginx")
    https_port, http_port = free_port(), free_port()
    text = with_test_certificate(CONF.read_text(), tmp_path)
    text = text.replace("listen 443 ", f"listen 127.0.0.1:{https_port} ").replace(
        "listen 80;", f"listen 127.0.0.1:{http_port};"
    )
    if has_ipv6_loopback():
        text = text.replace("listen [::]:443 ", f"listen [::1]:{https_port} ").replace(
            "listen [::]:80;", f"listen [::1]:{http_port};"
        )
    else:
        text = re.sub(r"^\s*listen \[::\].*$", "", text, flags=re.M)
    assert "127.0.0.1:8400;" in text
    text = text.replace("127.0.0.1:8400;", f"127.0.0.1:{broker.port};")
    site = tmp_path / "tenure.conf"
    site.write_text(text)
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(nginx_conf(tmp_path, site))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", tmp_path / "access.log"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_nginx_sends_hsts_and_the_request_id_reaches_the_broker(proxied: tuple[str, str, Path], broker: Broker) -> None:
    https, http, _ = proxied
    status, headers, body = get(f"{https}/healthz")
    assert status == 200, body
    assert headers["Strict-Transport-Security"] == "max-age=63072000"
    # nginx's $request_id (32 hex digits) went to the broker, which echoed it.
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
    status, headers, _ = get(f"{https}/v1/nonexistent")
    assert status == 404
    assert headers["Strict-Transport-Security"] == "max-age=63072000"  # errors too ("always")
    status, headers, _ = get(f"{http}/console/")
    assert status == 301
    assert headers["Location"].startswith("https://") and headers["Location"].endswith("/console/")


def _call(url: str, method: str, token: str | None, body: object = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=unverified()) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def test_the_event_stream_passes_nginx_unbuffered(proxied: tuple[str, str, Path], broker: Broker) -> None:
    """An admin's force-release reaches a stream held through nginx at once: nginx
    buffers nothing of it (the broker's X-Accel-Buffering: no), so it is not held back."""
    https, _, _ = proxied
    operator = (broker.data / "operator-token").read_text().strip()
    status, est = _call(f"{https}/v1/estates", "POST", operator, {"name": "Nginx", "admin_name": "Al"})
    assert status == 201, est
    bought = {
        "sales_order": "SO-1",
        "licence_type": "one-in-one-out",
        "quantity": 2,
        "expires_at": "2099-01-01T00:00:00Z",
    }
    assert _call(f"{https}/v1/estates/{est['id']}/purchases", "POST", operator, bought)[0] == 201
    pool = f"{https}/v1/estates/{est['id']}/pools/{est['default_pool_id']}"
    status, code = _call(f"{pool}/auth-codes", "POST", est["admin_token"], {})
    assert status == 201, code
    status, server = _call(f"{https}/v1/enroll", "POST", None, {"code": code["code"], "name": "h"})
    assert status == 201, server
    wanted = {"encoder": "ENC-1", "licence_type": "one-in-one-out", "count": 1}
    status, lease = _call(f"{https}/v1/leases", "POST", server["server_token"], wanted)
    assert status == 201, lease
    headers = {"Authorization": f"Bearer {server['server_token']}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        async with session.get(f"{https}/v1/stream", headers=headers) as resp:
            assert resp.status == 200
            reader = SseReader(resp)
            assert (await reader.event(within=5.0)).event == "ready"
            began = time.monotonic()
            revoke = f"{https}/v1/estates/{est['id']}/leases/{lease['id']}"
            assert (await asyncio.to_thread(_call, revoke, "DELETE", est["admin_token"]))[0] == 204
            got = await reader.event(within=2.0)
            assert time.monotonic() - began < 2.0
            assert resp.connection is not None and resp.connection.transport is not None
            resp.connection.transport.abort()  # a TLS stream cut mid-way closes without a goodbye
    assert got.event == "lease.revoked" and got.payload["data"]["lease_id"] == lease["id"]
