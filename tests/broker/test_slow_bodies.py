"""Slow request bodies: they hold no redemption budget and are cut after the timeout.

Real sockets against a real server: a client that sends its headers and ``{`` and then
stalls is exactly what an in-process test client cannot fake.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from broker.clock import SystemClock
from broker.config import load
from broker.ids import new_token
from broker.services import SERVICES
from shared.timefmt import format_ts
from tests.reliability.live import LiveBroker, request

TIMEOUT = 2.0


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveBroker, str]]:
    operator = new_token("op")
    config = load(
        None,
        env={},
        data_dir=tmp_path / "data",
        operator_token=operator,
        clock=SystemClock(),
        sqlite_synchronous="normal",
        body_timeout_seconds=TIMEOUT,
    )
    with LiveBroker(config) as broker:
        yield broker, operator


def _code(broker: LiveBroker, operator: str) -> str:
    status, est = request(f"{broker.url}/v1/estates", "POST", operator, {"name": "E", "admin_name": "A"})
    assert status == 201, est
    expires = format_ts(time.time() + 365 * 86400)
    purchase = {"sales_order": "SO-1", "licence_type": "one-in-one-out", "quantity": 4, "expires_at": expires}
    status, body = request(f"{broker.url}/v1/estates/{est['id']}/purchases", "POST", operator, purchase)
    assert status == 201, body
    status, made = request(
        f"{broker.url}/v1/estates/{est['id']}/pools/{est['default_pool_id']}/auth-codes", "POST", est["admin_token"], {}
    )
    assert status == 201, made
    code: str = made["code"]
    return code


def _stall(port: int) -> socket.socket:
    """A connection that sends the headers of an enrolment and ``{``, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{"
    )
    return sock


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline)."""
    data = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data + b"<still open>"
        if not chunk:
            return data
        data += chunk


def test_stalled_bodies_neither_delay_nor_refuse_a_valid_enrolment(live: tuple[LiveBroker, str]) -> None:
    broker, operator = live
    code = _code(broker, operator)
    stalled = [_stall(broker.port) for _ in range(40)]
    try:
        time.sleep(0.2)  # let the broker start reading all 40 bodies
        started = time.monotonic()
        status, body = request(f"{broker.url}/v1/enroll", "POST", None, {"code": code, "name": "host-1"})
        took = time.monotonic() - started
        assert status == 201, body
        assert took < TIMEOUT / 2, took  # promptly: not after the stalled ones time out
        # The stalled ones get 408 request_timeout after the timeout, and are cut.
        deadline = time.monotonic() + TIMEOUT + 3
        for sock in stalled:
            answer = _read_all(sock, deadline)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"application/problem+json" in answer and b"request_timeout" in answer
            assert not answer.endswith(b"<still open>"), "the connection was not closed"
        assert time.monotonic() - started < TIMEOUT + 3
    finally:
        for sock in stalled:
            sock.close()


def test_a_body_that_finishes_in_time_is_read(live: tuple[LiveBroker, str]) -> None:
    broker, operator = live
    code = _code(broker, operator)
    payload = b'{"code": "' + code.encode() + b'", "name": "host-2"}'
    sock = socket.create_connection(("127.0.0.1", broker.port))
    try:
        sock.sendall(
            b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload[:5]
        )
        time.sleep(TIMEOUT / 4)
        sock.sendall(payload[5:])
        answer = _read_all(sock, time.monotonic() + 5)
        assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
    finally:
        sock.close()


def test_a_body_awaited_after_the_stop_began_is_answered_shutting_down_at_once(live: tuple[LiveBroker, str]) -> None:
    # Once aiohttp's shutdown has begun it reads nothing more, so that body could only time
    # out: the handler says so at once instead, and the client sends it again elsewhere.
    broker, _operator = live

    def stop_began(app: web.Application) -> None:
        app[SERVICES].bodies.closed = True

    broker.in_loop(stop_began)
    sock = _stall(broker.port)
    try:
        started = time.monotonic()
        answer = _read_all(sock, started + TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b'"code": "shutting_down"' in answer, answer
        assert time.monotonic() - started < TIMEOUT / 2
    finally:
        sock.close()
