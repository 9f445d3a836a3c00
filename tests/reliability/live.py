"""A real broker on 127.0.0.1, for clients that cannot go through pytest-aiohttp.

``LiveBroker`` runs ``create_app(config)`` on its own event loop in a thread (for sync
clients such as schemathesis' ``requests``); ``BrokerProcess`` runs
``tenure-broker serve`` as a subprocess (for SIGKILL and restarts).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.app import create_app
from broker.config import Config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveBroker:
    """``with LiveBroker(config) as b: b.url`` — the app served from a background thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-broker", daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> LiveBroker:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(create_app(self.config), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def in_loop(self, call: Callable[[web.Application], object]) -> None:
        """``call(app)`` on the broker's own loop, waited for."""
        assert self._runner is not None

        async def run() -> None:
            assert self._runner is not None
            call(self._runner.app)

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


def request(
    url: str, method: str = "GET", token: str | None = None, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One plain HTTP call (stdlib only): (status, parsed JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text) if text else None
        except ValueError:
            return exc.code, text


class BrokerProcess:
    """``tenure-broker serve`` in a subprocess on a data directory, killable and restartable."""

    def __init__(self, data_dir: Path, operator_token: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.operator_token = operator_token
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
        env.update({"TENURE_OPERATOR_TOKEN": self.operator_token, **self.extra_env})
        log = self.log_path.open("ab")
        script = Path(sys.executable).parent / "tenure-broker"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "broker.cli"]
        self.proc = subprocess.Popen(
            [*command, "serve", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: kill() takes every worker with it
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                status, _ = request(f"{self.url}/healthz", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"broker did not start: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL to every process of the broker at once (its workers and writer too):
        no clean-up, no final flush, as in a crash of the machine."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
