"""A strict reader of Server-Sent Events, as a browser's EventSource parses them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SseEvent:
    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> Any:
        return json.loads("\n".join(self.data_lines))


def parse_sse(text: str) -> tuple[list[SseEvent], list[str]]:
    """Events and comment lines, per the WHATWG event-stream rules (any line ending)."""
    events: list[SseEvent] = []
    comments: list[str] = []
    current = SseEvent()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for line in lines:
        if line == "":
            if current.data_lines:
                events.append(current)
            current = SseEvent()
            continue
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            current.data_lines.append(value)
    return events, comments


async def read_sse(resp: aiohttp.ClientResponse) -> list[SseEvent]:
    text = await resp.text()
    events, _ = parse_sse(text)
    return events


async def iter_sse(resp: aiohttp.ClientResponse, comments: list[str] | None = None):  # type: ignore[no-untyped-def]
    """Yield events as they arrive (and collect comment lines into `comments`)."""
    current = SseEvent()
    async for raw in resp.content:
        line = raw.decode().rstrip("\n").rstrip("\r")
        if line == "":
            if current.data_lines:
                yield current
            current = SseEvent()
            continue
        if line.startswith(":"):
            if comments is not None:
                comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            current.data_lines.append(value)
