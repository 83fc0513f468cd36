"""A strict reader of Server-Sent Events, as a browser's EventSource parses them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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


class _Parser:
    """Feeds lines (without their line ending) and returns each event as it completes."""

    def __init__(self, comments: list[str] | None = None) -> None:
        self.current = SseEvent()
        self.comments = comments

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            done, self.current = self.current, SseEvent()
            return done if done.data_lines else None
        if line.startswith(":"):
            if self.comments is not None:
                self.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.current.event = value
        elif name == "id":
            self.current.id = value
        elif name == "data":
            self.current.data_lines.append(value)
        return None


def parse_sse(text: str) -> tuple[list[SseEvent], list[str]]:
    """Events and comment lines, per the WHATWG event-stream rules (any line ending)."""
    comments: list[str] = []
    parser = _Parser(comments)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    events = [ev for line in lines if (ev := parser.feed(line)) is not None]
    return events, comments


async def read_sse(resp: aiohttp.ClientResponse) -> list[SseEvent]:
    events, _ = parse_sse(await resp.text())
    return events


async def iter_sse(
    resp: aiohttp.ClientResponse, comments: list[str] | None = None
) -> AsyncIterator[SseEvent]:
    """Yield events as they arrive (and collect comment lines into `comments`)."""
    parser = _Parser(comments)
    async for raw in resp.content:
        if (ev := parser.feed(raw.decode().rstrip("\n").rstrip("\r"))) is not None:
            yield ev
