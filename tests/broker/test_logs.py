"""The broker's log lines, read from a real ``tenure-broker serve`` process: JSON lines, the
access log, X-Request-Id, the refusals an operator must see, and "listening" only once bound."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.test_cli import COMMAND, Served, clean_env, free_port, run

WRONG_CODE = "12345670"


def call(
    url: str, method: str = "GET", token: str | None = None, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Served]:
    """A broker logging JSON into a file, at most two wrong codes per address."""
    port = free_port()
    log = tmp_path / "broker.log"
    env = clean_env(TENURE_LOG_FORMAT="json", TENURE_REDEEM_FAILURES_PER_ADDRESS="2")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(proc, port, log)
    served.wait_healthy()
    yield served
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def lines(log: Path) -> list[dict[str, Any]]:
    """Every line of ``log`` as JSON (failing the test on a line that is not)."""
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_json_lines_carry_the_request_fields_and_no_secret(broker: Served, tmp_path: Path) -> None:
    token = (tmp_path / "data" / "operator-token").read_text().strip()
    broker.wait_logged('"console at ')  # every worker started: stopping sooner, it is never said
    assert call(f"{broker.url}/v1/estates/est_nosuchestate", token=token)[0] == 404
    for _ in range(3):
        call(f"{broker.url}/v1/enroll", "POST", body={"code": WRONG_CODE, "name": "enc-1"})
    assert broker.stop() == 0

    found = lines(broker.log)
    text = broker.log.read_text()
    assert token not in text and WRONG_CODE not in text
    for line in found:
        assert {"ts", "level", "logger", "msg"} <= line.keys()
        assert line["ts"].endswith("Z") and "T" in line["ts"]
    messages = [line["msg"] for line in found]
    listening = next(i for i, m in enumerate(messages) if m.startswith("listening on "))
    assert any(m.startswith("console at http://127.0.0.1:") for m in messages[listening:])
    assert any(m.startswith("shutting down") for m in messages[listening:])
    assert messages[-1].startswith("stopped")

    access = [line for line in found if line["logger"] == "tenure.access"]
    estate = next(line for line in access if line["route"] == "/v1/estates/{estate}")
    assert estate["method"] == "GET" and estate["status"] == 404 and estate["estate"] == "est_nosuchestate"
    assert estate["principal_kind"] == "operator" and isinstance(estate["duration_ms"], float)
    assert len(estate["request_id"]) >= 8

    enrol = [line["status"] for line in access if line["route"] == "/v1/enroll"]
    assert enrol == [403, 403, 429]
    warnings = [line for line in found if line["level"] == "WARNING" and line["logger"] == "tenure.http"]
    assert [w["msg"].split(" from ")[0] for w in warnings] == [
        "refused an authentication code",
        "refused an authentication code",
        "rate limit tripped (retry after 900 s)",
    ]
    assert all(w["route"] == "/v1/enroll" and w["client"] == "127.0.0.1" for w in warnings)


def test_a_refused_console_sign_in_is_a_warning(broker: Served) -> None:
    assert call(f"{broker.url}/console/session", "POST", body={"token": "tnr_adm_" + "x" * 30})[0] == 401
    assert broker.stop() == 0
    warnings = [line for line in lines(broker.log) if line["level"] == "WARNING"]
    assert [w["msg"].split(" from ")[0] for w in warnings] == ["refused a console sign-in (unauthenticated)"]
    assert "x" * 30 not in broker.log.read_text()


def test_request_id_is_echoed_when_sane_and_made_otherwise(broker: Served) -> None:
    given = "req-1.a_B"
    assert call(f"{broker.url}/healthz", headers={"X-Request-Id": given})[1]["X-Request-Id"] == given
    for bad in ("", "x" * 65, "a b", "ü"):
        made = call(f"{broker.url}/v1/me", headers={"X-Request-Id": bad} if bad else {})[1]["X-Request-Id"]
        assert made != bad and 1 <= len(made) <= 64 and made.isalnum()
    other = call(f"{broker.url}/v1/me")[1]["X-Request-Id"]
    assert other != made
    assert broker.stop() == 0
    ids = [line.get("request_id") for line in lines(broker.log) if line["logger"] == "tenure.access"]
    assert given in ids and made in ids and other in ids


def test_a_malformed_request_is_one_warning_line(broker: Served) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
        assert b" 400 " in s.recv(100)
    time.sleep(0.2)
    assert broker.stop() == 0
    text = broker.log.read_text()
    found = lines(broker.log)
    server = [line for line in found if line["logger"] == "aiohttp.server"]
    assert len(server) == 1 and server[0]["level"] == "WARNING" and "exc" not in server[0]
    assert server[0]["msg"].startswith("malformed request from 127.0.0.1")
    assert "ERROR" not in text and "Traceback" not in text


def test_listening_is_logged_only_after_the_bind(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = clean_env(TENURE_LOG_FORMAT="text")
        result = run("serve", "--data-dir", str(tmp_path / "d"), "--port", str(port), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "INFO tenure.broker: listening on" not in result.stderr and "console at" not in result.stderr
    assert f"tenure-broker: cannot listen on 127.0.0.1:{port}:" in result.stderr.splitlines()[-1]


def test_the_access_log_can_be_turned_off(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "broker.log"
    env = clean_env(TENURE_LOG_FORMAT="json", TENURE_ACCESS_LOG="false")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")], env=env, stdout=out, stderr=out
        )
    served = Served(proc, port, log)
    try:
        served.wait_healthy()
        assert call(f"{served.url}/v1/me")[1]["X-Request-Id"]
    finally:
        assert served.stop() == 0
    found = lines(log)
    assert not [line for line in found if line["logger"] == "tenure.access"]
    assert any(line["msg"].startswith("listening on ") for line in found)


def test_a_traceback_is_one_json_field() -> None:
    import io
    import logging

    from shared import logs

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("tenure.test_logs")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.error("it broke", exc_info=True)
    finally:
        logger.removeHandler(handler)
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["msg"] == "it broke" and record["level"] == "ERROR"
    assert record["exc"].startswith("Traceback") and record["exc"].endswith("ValueError: boom")
