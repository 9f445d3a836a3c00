"""A reader of ``GET /v1/stream`` for the tests, written from the SSE specification
(independent of the agent's own parser, ``agent/stream.py``)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Frame:
    """One block up to a blank line: an event, or a heartbeat (comment only)."""

    event: str | None = None
    id: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def payload(self) -> Any:
        return json.loads("\n".join(self.data))


class SseReader:
    """Frames off an open response, one at a time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def frame(self, within: float = 5.0) -> Frame | None:
        """The next frame, None at the end of the stream."""
        frame = Frame()
        async with asyncio.timeout(within):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n").rstrip("\r")
                if line == "":
                    if frame.event or frame.data or frame.comments or frame.id or frame.retry is not None:
                        return frame
                    continue
                if line.startswith(":"):
                    frame.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    frame.event = value
                elif name == "id":
                    frame.id = value
                elif name == "data":
                    frame.data.append(value)
                elif name == "retry":
                    frame.retry = int(value)

    async def event(self, within: float = 5.0) -> Frame:
        """The next frame that is an event (heartbeats and the retry hint skipped)."""
        while True:
            frame = await self.frame(within)
            assert frame is not None, "the stream ended"
            if frame.event is not None:
                return frame
