"""``tenure-broker`` as an operator runs it: a real process on a free port."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "tenure-broker"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "broker.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    env.update(extra)
    return env


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def wait_healthy(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if get(f"{self.url}/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("broker did not become healthy")

    def wait_logged(self, text: str, timeout: float = 15) -> None:
        """Until the log has ``text``: with workers, /healthz answers once the first one
        listens, and the broker announces itself (``console at``) once all of them do."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} was not logged: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[Served] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Served:
        port = free_port()
        log = tmp_path / f"broker-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*COMMAND, "serve", "--port", str(port), *args],
                cwd=tmp_path,
                env=env or clean_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        served = Served(proc, port, log)
        started.append(served)
        return served

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_serve_generates_operator_token_and_stops_on_sigterm(serve: object, tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = serve("--data-dir", str(data))  # type: ignore[operator]
    broker.wait_healthy()
    assert json.loads(get(f"{broker.url}/healthz")[1]) == {"status": "ok"}
    token_file = data / "operator-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o077 == 0
    token = token_file.read_text().strip()
    assert token.startswith("tnr_op_") and len(token) >= 40
    status, body = get(f"{broker.url}/v1/me", token)
    assert (status, json.loads(body)) == (200, {"kind": "operator"})
    assert get(f"{broker.url}/v1/me", "tnr_op_wrong")[0] == 401
    started = time.monotonic()
    assert broker.stop() == 0
    assert time.monotonic() - started < 5
    log = broker.log.read_text()
    assert token not in log
    assert str(token_file) in log or "operator-token" in log
    # A second start reuses the token rather than making another.
    again = serve("--data-dir", str(data))  # type: ignore[operator]
    again.wait_healthy()
    assert token_file.read_text().strip() == token
    assert get(f"{again.url}/v1/me", token)[0] == 200
    assert again.stop() == 0
    assert token not in again.log.read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_tells_systemd_ready_once_listening_and_stopping_on_sigterm(
    serve: object, tmp_path: Path, workers: str
) -> None:
    # Type=notify in deploy/systemd/tenure-broker.service: READY=1 must come, and only
    # once the port answers; STOPPING=1 when SIGTERM starts the shutdown.
    short = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))  # AF_UNIX paths are short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(short / "notify"))
        sock.settimeout(15)
        broker = serve(  # type: ignore[operator]
            "--data-dir",
            str(tmp_path / "data"),
            "--workers",
            workers,
            env=clean_env(NOTIFY_SOCKET=str(short / "notify")),
        )
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\n")
        # With workers, only the parent speaks to systemd, once every worker answers.
        listening = "listening" if workers == "1" else f"{workers} workers listening"
        assert f"STATUS={listening} on http://127.0.0.1:{broker.port}" in ready
        for _ in range(10):
            assert get(f"{broker.url}/healthz")[0] == 200  # at once, whichever worker: no retry needed
        broker.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert broker.proc.wait(timeout=10) == 0
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            print(sock.recv(4096))  # nothing more: no worker sent a message of its own
    finally:
        sock.close()
        shutil.rmtree(short, ignore_errors=True)


def test_operator_token_from_the_environment_writes_no_file(serve: object, tmp_path: Path) -> None:
    token = "tnr_op_" + "Z" * 43
    data = tmp_path / "envdata"
    broker = serve("--data-dir", str(data), env=clean_env(TENURE_OPERATOR_TOKEN=token))  # type: ignore[operator]
    broker.wait_healthy()
    assert get(f"{broker.url}/v1/me", token)[0] == 200
    assert not (data / "operator-token").exists()
    assert broker.stop() == 0
    assert token not in broker.log.read_text()


def test_config_file_and_env_drive_serve(serve: object, tmp_path: Path) -> None:
    data = tmp_path / "fromfile"
    conf = tmp_path / "broker.toml"
    conf.write_text(f'[broker]\ndata_dir = "{data}"\nlog_level = "warning"\n')
    broker = serve("--config", str(conf))  # type: ignore[operator]
    broker.wait_healthy()
    assert (data / "tenure.db").exists()
    assert broker.stop() == 0


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=30, env=env or clean_env(), cwd=cwd
    )


def test_keys_rotate_adds_a_key_to_the_database_of_a_running_broker(serve: object, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = run("keys", "rotate", "--data-dir", str(data))  # before any start: makes the secret key
    assert first.returncode == 0, first.stderr
    assert (data / "secret-key").stat().st_mode & 0o777 == 0o600
    assert not (data / "keys").exists()
    broker = serve("--data-dir", str(data), env=clean_env(TENURE_KEY_RELOAD_SECONDS="0.05"))  # type: ignore[operator]
    broker.wait_healthy()
    kids = [k["kid"] for k in json.loads(get(f"{broker.url}/v1/keys")[1])["keys"]]
    assert len(kids) == 1 and kids[0] in first.stdout
    second = run("keys", "rotate", "--data-dir", str(data))  # while it runs: a write to its database
    assert second.returncode == 0, second.stderr
    assert "Added signing key" in second.stdout
    deadline = time.monotonic() + 10
    while len(kids) < 2:
        assert time.monotonic() < deadline, "the running broker did not pick up the new key"
        time.sleep(0.05)
        kids = [k["kid"] for k in json.loads(get(f"{broker.url}/v1/keys")[1])["keys"]]
    assert kids[1] in second.stdout
    assert broker.stop() == 0
    secret = (data / "secret-key").read_text().strip()
    assert secret not in broker.log.read_text() + first.stdout + first.stderr + second.stderr


def test_a_broker_given_the_wrong_secret_key_refuses_to_start(serve: object, tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = serve("--data-dir", str(data))  # type: ignore[operator]
    broker.wait_healthy()
    assert broker.stop() == 0
    other = base64.b64encode(os.urandom(32)).decode()
    for env in (clean_env(TENURE_SECRET_KEY=other), None):
        if env is None:
            (data / "secret-key").unlink()  # a data directory restored without its secret key
        result = run("serve", "--data-dir", str(data), "--port", str(free_port()), env=env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("tenure-broker: ") and "Traceback" not in result.stderr
        assert "secret key" in last and "'secret_key_file'" in last
    assert not (data / "secret-key").exists()  # no new secret key was made over the old keys
    refused = run("keys", "rotate", "--data-dir", str(data))
    assert refused.returncode == 2 and "secret-key" in refused.stderr


@pytest.mark.parametrize(
    "args, env, setting",
    [
        (["serve", "--port", "nope"], {}, "port"),
        (["serve", "--port", "70000"], {}, "port"),
        (["serve", "--workers", "0"], {}, "workers"),
        (["serve"], {"TENURE_LOG_LEVEL": "loud"}, "log_level"),
        (["serve"], {"TENURE_SQLITE_SYNCHRONOUS": "off"}, "sqlite_synchronous"),
        (["serve"], {"TENURE_TRUSTED_PROXIES": "10.0.0.0/33"}, "trusted_proxies"),
        (["serve"], {"TENURE_TRUST_FORWARDED_FOR": "true"}, "trust_forwarded_for"),
        (["serve", "--tls-cert", "/nonexistent.pem"], {}, "tls_key"),
        (["keys", "rotate"], {"TENURE_DEFAULT_LEASE_SECONDS": "1"}, "default_lease_seconds"),
        (["serve"], {"TENURE_METRICS_TOKEN": "tnr_met_" + "x" * 24}, "metrics_token"),
        (["serve"], {"TENURE_SECRET_KEY": "c2hvcnQ="}, "secret_key"),
        (["keys", "rotate"], {"TENURE_SECRET_KEY": "not base64 at all!"}, "secret_key"),
        (["serve"], {"TENURE_SECRET_KEY": "A" * 44, "TENURE_SECRET_KEY_FILE": "/k"}, "secret_key_file"),
        (["keys", "rotate"], {"TENURE_SECRET_KEY_FILE": "/nonexistent/secret-key"}, "secret_key_file"),
        (["serve"], {"TENURE_METRICS_TOKEN": "tnr_op_" + "x" * 40}, "metrics_token"),
        (["serve"], {"TENURE_METRICS_TOKEN": "tnr_met_" + "x" * 20 + " with a space"}, "metrics_token"),
    ],
)
def test_bad_config_exits_2_naming_the_setting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    env: dict[str, str],
    setting: str,
) -> None:
    # In-process (the same main() the console script calls), to keep the suite fast.
    from broker.cli import main

    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("TENURE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"'{setting}'" in err and err.startswith("tenure-broker: ")
    assert not (tmp_path / "tenure-data").exists()  # nothing was started or created


def test_bad_config_exits_2_from_the_console_script(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("default_lease_seconds = 10\n")
    result = run("serve", "--config", str(conf), cwd=tmp_path)
    assert result.returncode == 2 and "'default_lease_seconds'" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from broker.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_port_in_use_fails_cleanly(serve: object, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run("serve", "--data-dir", str(tmp_path / "d"), "--port", str(port), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and str(port) in result.stderr


def test_console_script_is_installed() -> None:
    assert BIN.exists() or shutil.which("tenure-broker"), "pip install -e . should provide tenure-broker"
