"""systemd notifications reach a real datagram socket, path or abstract."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.sdnotify import Notifier
from tests.agent.harness import FakeClock, settle


@pytest.fixture
def listener(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(short_dir / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_ready_status_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(env={"NOTIFY_SOCKET": path})
    assert notifier.ready("2 bindings")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 bindings"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_namespace() -> None:
    name = f"tenure-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent() -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_a_vanished_socket_is_not_fatal(short_dir: Path) -> None:
    assert Notifier(env={"NOTIFY_SOCKET": str(short_dir / "gone")}).ready() is False


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 20.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 20.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert Notifier(env=env).watchdog_interval == interval


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock``, without blocking."""
    sock.setblocking(False)
    got = []
    while True:
        try:
            got.append(sock.recv(64))
        except BlockingIOError:
            return got


async def test_watchdog_pings_at_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    clock = FakeClock()
    notifier = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"}, clock=clock)
    task = asyncio.create_task(notifier.keep_watchdog())
    try:
        await settle()
        assert received(sock) == [b"WATCHDOG=1"]  # at once
        await clock.advance(9.9)
        assert received(sock) == []  # not before half the 20 s interval
        await clock.advance(0.1)
        assert received(sock) == [b"WATCHDOG=1"]
        await clock.advance(30)
        assert received(sock) == [b"WATCHDOG=1"] * 3  # at 20, 30 and 40 s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_a_watchdog_nothing_is_pinged(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    clock = FakeClock()
    await Notifier(env={"NOTIFY_SOCKET": path}, clock=clock).keep_watchdog()  # returns at once
    assert received(sock) == []
    assert clock.sleeping == 0
