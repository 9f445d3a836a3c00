"""The agent as systemd runs it: a real process, signals, a crash, the notify socket."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.encoder_client import EncoderClient
from tests.agent.processes import AgentProcess, BrokerProcess, Estate, wait_for


@pytest.fixture(scope="module")
def broker_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path_factory.mktemp("broker"))
    yield broker
    broker.stop()


def enrolled(broker: BrokerProcess, estate: Estate, state: Path, env: dict[str, str]) -> None:
    from agent.cli import main

    assert (
        main(["enroll", estate.code(), "--broker", broker.url, "--state-dir", str(state), "--name", "enc-host-7"]) == 0
    )


def test_crash_and_restart_readopts_without_changing_in_use(
    broker_process: BrokerProcess,
    tmp_path: Path,
    short_dir: Path,
    agent_env: dict[str, str],
) -> None:
    estate = Estate(broker_process)
    state, sock = tmp_path / "state", short_dir / "agent.sock"
    enrolled(broker_process, estate, state, agent_env)
    agent = AgentProcess(state, sock, agent_env)
    client = EncoderClient(sock)
    first = {s: client.acquire(s, "one-in-one-out", n, wait=10) for s, n in (("ENC-1", 2), ("ENC-2", 3))}
    assert all(lease.state == "active" for lease in first.values())
    assert estate.in_use() == 5
    agent.stop(signal.SIGKILL)  # a crash: nothing released, the socket file left behind
    assert estate.in_use() == 5
    again = AgentProcess(state, sock, agent_env)
    try:
        for serial, lease in first.items():
            now = client.lease(serial)
            assert now is not None and now.usable
            assert now.raw["lease"]["id"] == lease.raw["lease"]["id"]
        assert estate.in_use() == 5
    finally:
        assert again.stop() == 0
    assert estate.in_use() == 0


def test_systemd_hears_ready_and_stopping(
    broker_process: BrokerProcess,
    tmp_path: Path,
    short_dir: Path,
    agent_env: dict[str, str],
) -> None:
    estate = Estate(broker_process)
    state, sock = tmp_path / "state", short_dir / "agent.sock"
    enrolled(broker_process, estate, state, agent_env)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(short_dir / "notify"))
    notify.settimeout(10)
    env = {**agent_env, "NOTIFY_SOCKET": str(short_dir / "notify"), "WATCHDOG_USEC": "2000000"}
    try:
        agent = AgentProcess(state, sock, env)
        messages = [notify.recv(4096).decode()]
        assert messages[0].startswith("READY=1")
        assert sock.exists()  # READY only once the socket is served
        wait_for(lambda: messages.append(notify.recv(4096).decode()) or "WATCHDOG=1" in messages, "a watchdog ping")
        assert agent.stop() == 0
        rest = []
        notify.settimeout(0.5)
        try:
            while True:
                rest.append(notify.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        notify.close()


def test_status_json_from_a_running_service(
    broker_process: BrokerProcess,
    tmp_path: Path,
    short_dir: Path,
    agent_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agent.cli import main

    estate = Estate(broker_process)
    state, sock = tmp_path / "state", short_dir / "agent.sock"
    enrolled(broker_process, estate, state, agent_env)
    agent = AgentProcess(state, sock, agent_env)
    try:
        EncoderClient(sock).acquire("ENC-1", "one-in-one-out", 2, wait=10)
        capsys.readouterr()
        assert main(["status", "--json", "--socket", str(sock)]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["running"] is True
        assert status["bindings"][0]["broker"] == "reachable"
        [encoder] = status["encoders"]
        assert encoder["state"] == "active" and encoder["lease"]["count"] == 2
        assert "token" not in encoder["lease"]  # status never shows a token
        log = agent.log.read_text()
    finally:
        assert agent.stop() == 0
    assert "tnr_srv_" not in log + agent.log.read_text()
    assert "lease granted: encoder ENC-1" in log


def test_status_json_while_the_broker_is_away(
    broker_process: BrokerProcess,
    tmp_path: Path,
    short_dir: Path,
    agent_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A monitoring check reading --json sees offline, not active, and exit 4."""
    from agent.cli import main

    estate = Estate(broker_process)
    state, sock = tmp_path / "state", short_dir / "agent.sock"
    enrolled(broker_process, estate, state, agent_env)
    agent = AgentProcess(state, sock, agent_env)
    try:
        EncoderClient(sock).acquire("ENC-1", "one-in-one-out", 2, wait=10)
        broker_process.stop()
        capsys.readouterr()
        assert main(["status", "--json", "--socket", str(sock)]) == 4
        out, err = capsys.readouterr()
        status = json.loads(out)
        [binding] = status["bindings"]
        assert (binding["broker"], binding["broker_error"]) == ("unreachable", "connection refused")
        [encoder] = status["encoders"]
        assert encoder["state"] == "offline" and encoder["lease"]["count"] == 2
        assert encoder["error"]["code"] == "broker_unavailable"
        assert err == f"error: cannot reach the broker at {broker_process.url}: connection refused; " + (
            "1 lease is served offline until it expires\n"
        )
    finally:
        if not broker_process.running:
            broker_process.start()
        assert agent.stop() == 0


def test_json_logs_are_one_object_a_line(
    broker_process: BrokerProcess,
    tmp_path: Path,
    short_dir: Path,
    agent_env: dict[str, str],
) -> None:
    estate = Estate(broker_process)
    state, sock = tmp_path / "state", short_dir / "agent.sock"
    enrolled(broker_process, estate, state, agent_env)
    agent = AgentProcess(state, sock, {**agent_env, "TENURE_AGENT_LOG_FORMAT": "json"})
    try:
        EncoderClient(sock).acquire("ENC-1", "one-in-one-out", 1, wait=10)
    finally:
        assert agent.stop() == 0
    lines = [json.loads(line) for line in agent.log.read_text().splitlines()]
    assert lines and all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert all(line["ts"].endswith("Z") for line in lines)
