"""deploy/nginx/tenure.conf as nginx 1.22 (Debian 12) reads it: `nginx -t`, then a real
nginx in front of a real broker, answering with HSTS and the broker's request id."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, Broker, free_port, get, need, nginx_conf, with_test_certificate

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
