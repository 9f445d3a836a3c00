"""Real `tenure-broker serve` and `tenure-agent run` subprocesses for the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from broker.ids import new_token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Any, what: str, within: float = 15.0) -> None:
    end = time.monotonic() + within
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class BrokerProcess:
    """`tenure-broker serve` in a subprocess, with a small operator/admin client."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.operator = new_token("op")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        """Start it (again: same port, data directory and operator token, as after a restart)."""
        env = {**os.environ, "TENURE_OPERATOR_TOKEN": self.operator}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(self._healthy, "the broker to start")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"broker exited: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                return True
        except OSError:
            return False

    def call(self, method: str, path: str, token: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        assert self.process.stderr is not None
        self.process.stderr.close()


class Estate:
    """A fresh estate: 10 one-in-one-out licences, a "Paris" pool holding 4 of them."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        est = broker.call("POST", "/v1/estates", broker.operator, {"name": "Acme Broadcast", "admin_name": "Alice"})
        self.id, self.admin, self.default_pool = est["id"], est["admin_token"], est["default_pool_id"]
        purchase = broker.call(
            "POST",
            f"/v1/estates/{self.id}/purchases",
            broker.operator,
            {
                "sales_order": "SO-1001",
                "licence_type": "one-in-one-out",
                "quantity": 10,
                "expires_at": "2099-01-01T00:00:00Z",
            },
        )
        paris = broker.call(
            "POST",
            f"/v1/estates/{self.id}/pools",
            self.admin,
            {"name": "Paris", "moves": [{"purchase_id": purchase["id"], "count": 4}]},
        )
        self.pools = {"Default": self.default_pool, "Paris": paris["id"]}

    def code(self, pool: str = "Default") -> str:
        made = self.broker.call("POST", f"/v1/estates/{self.id}/pools/{self.pools[pool]}/auth-codes", self.admin, {})
        return str(made["code"])

    def in_use(self, pool: str = "Default") -> int:
        data = self.broker.call("GET", f"/v1/estates/{self.id}/pools/{self.pools[pool]}", self.admin)
        return int(data["in_use"])


class AgentProcess:
    """`tenure-agent run` in a subprocess."""

    def __init__(self, state_dir: Path, socket_path: Path, env: dict[str, str]) -> None:
        self.socket = socket_path
        self.log = state_dir.parent / "agent.log"
        self._log = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state_dir), "--socket", str(socket_path)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._serving, "the agent to serve its socket")

    def _serving(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"agent exited early:\n{self.log.read_text()}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket))  # a stale file from a crash does not count
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(15)
        self._log.close()
        return code
