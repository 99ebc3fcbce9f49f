"""A Server-Sent Events reader for tests, parsing the stream as the HTML spec says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp


@dataclass
class SseMessage:
    event: str = "message"
    data_lines: list[str] = field(default_factory=list)
    id: str | None = None
    retry: int | None = None

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)


@dataclass
class SseReader:
    """Reads one response; ``comments`` collects comment lines (heartbeats)."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    async def messages(self) -> AsyncIterator[SseMessage]:
        current = SseMessage()
        dispatchable = False
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return  # the server ended the stream
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if dispatchable:
                    yield current
                current, dispatchable = SseMessage(), False
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                current.data_lines.append(value)
                dispatchable = True
            elif name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "retry" and value.isdigit():
                self.retry = int(value)

    async def collect(self, limit: int = 10_000) -> list[SseMessage]:
        found: list[SseMessage] = []
        async for message in self.messages():
            found.append(message)
            if len(found) >= limit:
                break
        return found
