"""Browser-test fixtures: a real broker in a subprocess, and Debian's Chromium via Playwright.

The broker runs as ``python -m broker.cli serve`` on a free loopback port with its own
data directory, exactly as an operator starts it; the tests drive it with Playwright's
sync API (plain, non-async tests) and call its JSON API with urllib where the seed's
flow needs an agent or the operator.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.ids import new_token
from shared.timefmt import format_ts

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
DOCS = ROOT / "docs" / "console"
DAY = 86400


@dataclass
class LiveBroker:
    url: str
    operator: str

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        hdrs = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            exc.close()
            return exc.code, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, token: str | None = None, body: Any = None, status: int = 200) -> Any:
        got, answer = self.call(method, path, token, body)
        assert got == status, (method, path, got, answer)
        return answer

    def estate(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.ok(
            "POST", "/v1/estates", self.operator, {"name": name, "admin_name": "Alice"}, 201
        )
        return result

    def purchase(
        self, estate_id: str, sales_order: str, quantity: int, licence_type: str, days: float = 365
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.ok(
            "POST",
            f"/v1/estates/{estate_id}/purchases",
            self.operator,
            {
                "sales_order": sales_order,
                "licence_type": licence_type,
                "quantity": quantity,
                "expires_at": format_ts(time.time() + days * DAY),
            },
            201,
        )
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_broker(data: Path, operator: str, port: int, env: dict[str, str] | None = None) -> Iterator[LiveBroker]:
    """``tenure-broker serve`` on ``port`` over the data directory ``data``, until the block ends.

    ``env`` adds settings (``TENURE_PUBLIC_URL``…); starting it again over the same
    directory and port is a broker restart, as an operator does one.
    """
    data.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        "TENURE_OPERATOR_TOKEN": operator,
        "TENURE_SQLITE_SYNCHRONOUS": "normal",
        "TENURE_LOG_LEVEL": "warning",
    }
    full_env.pop("TENURE_PUBLIC_URL", None)
    full_env.update(env or {})
    log_path = data / "broker.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "serve",
            "--data-dir",
            str(data / "d"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    broker = LiveBroker(f"http://127.0.0.1:{port}", operator)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if broker.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the broker did not start:\n" + log_path.read_text(errors="replace"))
            time.sleep(0.05)
        yield broker
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def live_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    with running_broker(tmp_path_factory.mktemp("console-broker"), new_token("op"), free_port()) as broker:
        yield broker


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Module scope, not session: while Playwright's sync API
    is active its event loop counts as running in this thread, which async tests cannot share."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Console:
    """A fresh browser context and page on the live broker, and the screenshots it takes."""

    page: Any
    broker: LiveBroker
    dialogs: list[str]
    problems: list[str]

    def open(self) -> None:
        self.page.goto(self.broker.url + "/console/")

    def sign_in(self, token: str) -> None:
        self.open()
        self.page.get_by_role("textbox", name="Admin token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()

    def assert_clean(self) -> None:
        """No alert/confirm dialog fired, no script error, no CSP violation."""
        assert self.dialogs == []
        assert self.problems == []

    def shot(self, name: str, docs: bool = False) -> None:
        """Save a screenshot; with TENURE_CONSOLE_DOCS=1 the docs ones go to docs/console/."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        if docs and os.environ.get("TENURE_CONSOLE_DOCS") == "1":
            DOCS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(DOCS / f"{name}.png"))


@contextmanager
def open_console(browser: Any, broker: LiveBroker, width: int = 1024, height: int = 720) -> Iterator[Console]:
    """A fresh browser context (no cookies) and page on ``broker``, watched for problems."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(5000)
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    problems: list[str] = []

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            problems.append(message.text)

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", on_console)
    try:
        yield Console(page, broker, dialogs, problems)
    finally:
        context.close()


@pytest.fixture
def console(browser: Any, live_broker: LiveBroker) -> Iterator[Console]:
    with open_console(browser, live_broker) as opened:
        yield opened
