"""Broker replicas as real processes: ``tenure-broker serve`` on one PostgreSQL database.

``Replica`` runs the installed command (the venv's ``tenure-broker``) with the settings
an operator gives replicas, through the environment: ``TENURE_DATABASE_URL``,
``TENURE_SECRET_KEY`` and ``TENURE_OPERATOR_TOKEN`` the same on each, a data directory of
its own. ``call`` is one plain HTTP request (stdlib only, so threads can share nothing).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.postgres import TEST_SECRET_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def command() -> list[str]:
    """The installed ``tenure-broker`` beside this interpreter."""
    script = Path(sys.executable).parent / "tenure-broker"
    return [str(script)] if script.exists() else [sys.executable, "-m", "broker.cli"]


def environment(database: str, operator_token: str | None = None, **settings: Any) -> dict[str, str]:
    """The process environment of a replica (or of a CLI command on its database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    env.update(TENURE_DATABASE_URL=database, TENURE_SECRET_KEY=TEST_SECRET_KEY, TENURE_LOG_FORMAT="text")
    if operator_token is not None:
        env["TENURE_OPERATOR_TOKEN"] = operator_token
    env.update({f"TENURE_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def call(
    url: str,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> tuple[int, Any]:
    """One HTTP request: (status, parsed JSON or None). A connection that fails raises OSError."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
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


class Replica:
    """``tenure-broker serve`` on ``database``, with a data directory of its own."""

    def __init__(self, name: str, workdir: Path, database: str, operator_token: str, **settings: Any) -> None:
        self.name = name
        self.data_dir = workdir / name
        self.log_path = workdir / f"{name}.log"
        self.env = environment(database, operator_token, **settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, own_group: bool = False) -> Replica:
        """Start, without waiting (``ready`` waits); several start at the same moment.
        ``own_group``: in a process group of its own, as a terminal's foreground job is."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *command(),
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=own_group,
            )
        return self

    def ready(self, timeout: float = 30.0) -> None:
        """Once every worker answers: the whole broker's "listening on … (pid N)" line (the
        first worker answers /healthz before the others have started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            try:
                listening = re.search(r"listening on \S+ \(pid \d+\)", self.log_path.read_text())
                if listening and call(f"{self.url}/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no clean-up, no goodbye to the database."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 15 s); the exit status, None if it never started."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return None if self.proc is None else self.proc.wait()


def cli(database: str, cwd: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``tenure-broker ARGS --database URL`` in ``cwd``, as an operator runs it beside the replicas."""
    return subprocess.run(
        [*command(), *args, "--database", database],
        env=environment(database),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
