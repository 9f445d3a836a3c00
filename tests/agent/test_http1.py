"""The local API's HTTP/1.1 (agent/http1.py), spoken to over a real Unix socket byte by byte."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import http1
from agent.http1 import Request, Response, Server, json_response


def refuse(status: int, code: str, detail: str) -> Response:
    return json_response({"status": status, "code": code, "detail": detail}, status=status)


class Served:
    def __init__(self, server: Server, path: Path) -> None:
        self.server, self.path = server, path
        self.release = asyncio.Event()  # what /slow waits for

    async def exchange(self, raw: bytes, answers: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
        """Send ``raw`` on one connection and read ``answers`` answers."""
        reader, writer = await asyncio.open_unix_connection(str(self.path))
        try:
            writer.write(raw)
            return [await read_answer(reader) for _ in range(answers)]
        finally:
            writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    served: Served

    async def handle(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("a bug")
        if request.path == "/slow":
            await served.release.wait()
        if request.path == "/big":
            return Response(200, b"x" * 65536, "text/plain")
        return json_response(
            {"method": request.method, "path": request.path, "q": request.query.get("q"), "body": request.body.decode()}
        )

    server = Server(handle, refuse, max_body=1024)
    path = tmp_path / "s.sock"
    listener = await asyncio.get_running_loop().create_unix_server(server, str(path))
    served = Served(server, path)
    yield served
    listener.close()
    server.close_idle()
    await server.cut(0.5)


async def test_a_request_gets_its_answer_with_a_length_and_the_connection_stays_open(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    for i in range(2):
        writer.write(f"GET /v1/x%20y?q={i} HTTP/1.1\r\nHost: agent\r\n\r\n".encode())
        status, headers, body = await read_answer(reader)
        assert status == 200
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert "connection" not in headers
        assert json.loads(body) == {"method": "GET", "path": "/v1/x y", "q": str(i), "body": ""}
    writer.close()


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    raw = b"".join(f"PUT /{i} HTTP/1.1\r\nHost: agent\r\nContent-Length: 1\r\n\r\n{i}".encode() for i in range(5))
    answers = await served.exchange(raw, answers=5)
    assert [json.loads(body)["body"] for _, _, body in answers] == ["0", "1", "2", "3", "4"]


async def test_a_caller_that_sends_without_reading_is_held_back_then_answered_in_full(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    requests = 60
    writer.write(b"GET /big HTTP/1.1\r\nHost: agent\r\n\r\n" * requests)
    await asyncio.sleep(0.3)  # no answer is read meanwhile: ~4 MB of them are owed
    [connection] = served.server.connections
    assert connection.writing_paused  # the socket is full: the server waits for the caller
    assert connection.transport is not None
    assert connection.transport.get_write_buffer_size() < 2**20  # ...holding about one answer
    for _ in range(requests):
        status, _, body = await read_answer(reader)
        assert (status, len(body)) == (200, 65536)
    writer.write(b"GET /after HTTP/1.1\r\nHost: agent\r\n\r\n")  # read again once drained
    status, _, body = await read_answer(reader)
    assert (status, json.loads(body)["path"]) == (200, "/after")
    writer.close()


async def test_a_chunked_body_is_read_whole(served: Served) -> None:
    raw = b"PUT /c HTTP/1.1\r\nHost: agent\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    [(status, _, body)] = await served.exchange(raw)
    assert (status, json.loads(body)["body"]) == (200, "abcde")


async def test_http_1_0_and_connection_close_are_answered_then_closed(served: Served) -> None:
    for raw in (b"GET /a HTTP/1.0\r\n\r\n", b"GET /a HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"):
        reader, writer = await asyncio.open_unix_connection(str(served.path))
        writer.write(raw)
        status, headers, _ = await read_answer(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"this is not http\r\n\r\n", 400, "bad_request"),
        (b"GET /a HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (b"GET /a HTTP/1.1\r\nHost: agent\r\nContent-Length: nope\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: agent\r\n\r\n", 400, "bad_request"),
        (b"PUT /a HTTP/1.1\r\nHost: agent\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, 413, "payload_too_large"),
        (b"PUT /a HTTP/1.1\r\nHost: agent\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", 400, "bad_request"),
        (b"GET /boom HTTP/1.1\r\nHost: agent\r\n\r\n", 500, "internal_error"),
    ],
    ids=["not-http", "no-host", "bad-length", "long-line", "too-large", "bad-chunk", "handler-bug"],
)
async def test_what_cannot_be_answered_is_refused_and_the_connection_closed(
    served: Served, raw: bytes, status: int, code: str
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(raw)
    got, headers, body = await read_answer(reader)
    assert (got, json.loads(body)["code"], headers["connection"]) == (status, code, "close")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # ...and the server goes on answering others.
    [(status, _, _)] = await served.exchange(b"GET /after HTTP/1.1\r\nHost: agent\r\n\r\n")
    assert status == 200


async def test_a_caller_gone_mid_body_or_mid_request_leaves_the_server_serving(served: Served) -> None:
    _, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"PUT /a HTTP/1.1\r\nHost: agent\r\nContent-Length: 100\r\n\r\nonly part")
    await writer.drain()
    writer.close()
    _, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"GET /slow HTTP/1.1\r\nHost: agent\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    assert served.server.busy == 1
    writer.close()
    await asyncio.sleep(0.05)
    assert served.server.busy == 1  # not cancelled with its caller gone (a lease asked for stays asked for)
    served.release.set()  # the handler finishes; its answer has nowhere to go
    for _ in range(100):
        if served.server.busy == 0:
            break
        await asyncio.sleep(0.01)
    assert served.server.busy == 0
    [(status, _, _)] = await served.exchange(b"GET /after HTTP/1.1\r\nHost: agent\r\n\r\n")
    assert status == 200


async def test_stopping_closes_idle_connections_lets_a_request_finish_and_cuts_the_rest(served: Served) -> None:
    idle_reader, idle_writer = await asyncio.open_unix_connection(str(served.path))
    slow_reader, slow_writer = await asyncio.open_unix_connection(str(served.path))
    slow_writer.write(b"GET /slow HTTP/1.1\r\nHost: agent\r\n\r\n")
    await asyncio.sleep(0.05)
    served.server.close_idle()
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle one: closed at once
    served.release.set()
    status, headers, _ = await read_answer(slow_reader)  # the busy one: answered, then closed
    assert (status, headers["connection"]) == (200, "close")
    assert await asyncio.wait_for(slow_reader.read(), 5) == b""
    idle_writer.close()
    slow_writer.close()


async def test_cut_cancels_a_request_that_outlives_the_grace(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"GET /slow HTTP/1.1\r\nHost: agent\r\n\r\n")
    await asyncio.sleep(0.05)
    served.server.close_idle()
    assert served.server.busy == 1
    await served.server.cut(0.5)
    assert served.server.busy == 0
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_TIMEOUT", 0.1)
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"GET /a HTTP/1.1\r\nHost: agent\r\n\r\n")
    await read_answer(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
