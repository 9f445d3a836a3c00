"""The relay's framing between the SQLite writer and its workers (``broker.store.relay``),
on a real socket pair: frames cut anywhere by the reads, several in one read, and one
larger than the read buffer all arrive whole and in order; the end of the connection is
reported once."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from broker.store.relay import _READ_SIZE, _frame, _Frames, _Outbox
from tests.agent.harness import eventually


async def _connected() -> tuple[socket.socket, list[Any], asyncio.Event]:
    ours, theirs = socket.socketpair()
    got: list[Any] = []
    lost = asyncio.Event()

    def received(value: Any, outbox: _Outbox) -> None:
        assert isinstance(outbox, _Outbox)
        got.append(value)

    await asyncio.get_running_loop().create_connection(lambda: _Frames(received, lost.set), sock=theirs)
    ours.setblocking(False)
    return ours, got, lost


async def test_frames_cut_anywhere_arrive_whole_and_in_order() -> None:
    ours, got, lost = await _connected()
    loop = asyncio.get_running_loop()
    values: list[Any] = [(i, "ok", {"id": f"lse_{i}", "seats": list(range(i % 7))}) for i in range(40)]
    big = (99, "ok", "x" * (3 * _READ_SIZE))  # larger than the read buffer: it grows
    values.insert(17, big)
    stream = b"".join(_frame(v) for v in values)
    # Pieces of every size from 1 byte up: a length prefix split across reads, a frame
    # split across many, and many frames in one read.
    at, size = 0, 1
    while at < len(stream):
        await loop.sock_sendall(ours, stream[at : at + size])
        await asyncio.sleep(0)
        at += size
        size = size * 3 % 9973 + 1
    await eventually(lambda: len(got) == len(values), within=5, what="every frame")
    assert got == values
    assert not lost.is_set()
    ours.close()
    await asyncio.wait_for(lost.wait(), 5)
