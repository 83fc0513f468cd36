"""A chat client for fault tests: one streamed turn, read event by event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from pymongo.asynchronous.database import AsyncDatabase

from tests.support.sse import SseEvent, iter_sse, parse_sse
from tests.support.stack import JWT_SECRET

TERMINAL = ("done", "error")


def bearer(user: str) -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode({"sub": user, "iat": now, "exp": now + 600}, JWT_SECRET, "HS256")
    return {"Authorization": f"Bearer {token}"}


def words(n: int) -> str:
    """The simulator's reply to `[[sim:tokens=n]]`."""
    return " ".join(f"word{i}" for i in range(n))


@dataclass
class Turn:
    """An SSE response being read; every event read is kept in `events`."""

    resp: aiohttp.ClientResponse
    events: list[SseEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stream = iter_sse(self.resp)

    async def next(self, within: float = 30.0) -> SseEvent | None:
        """The next event, or None when the stream ended."""
        try:
            async with asyncio.timeout(within):
                ev: SseEvent = await anext(self._stream)
        except StopAsyncIteration:
            return None
        self.events.append(ev)
        return ev

    async def until(self, pred: Callable[[SseEvent], bool], within: float = 30.0) -> SseEvent:
        """Read until an event satisfies `pred` (it is returned)."""
        async with asyncio.timeout(within):
            while True:
                ev = await self.next(within)
                if ev is None:
                    raise AssertionError(f"stream ended early: {self.kinds}")
                if pred(ev):
                    return ev

    async def deltas_seen(self, n: int, within: float = 30.0) -> None:
        """Read until `n` assistant deltas have arrived in all."""
        if len(self.of("assistant")) >= n:
            return
        await self.until(lambda _: len(self.of("assistant")) >= n, within)

    async def finish(self, within: float = 60.0) -> SseEvent:
        """Read to the end of the stream; the terminal event (`done` or `error`)."""
        async with asyncio.timeout(within):
            while (ev := await self.next(within)) is not None:
                if ev.event in TERMINAL:
                    rest = await self.resp.content.read()
                    assert not parse_sse(rest.decode())[0], "events after the terminal one"
                    return ev
        raise AssertionError(f"stream ended without done/error: {self.kinds}")

    def close(self) -> None:
        self.resp.close()

    @property
    def kinds(self) -> list[str]:
        return [e.event for e in self.events]

    def of(self, kind: str) -> list[SseEvent]:
        return [e for e in self.events if e.event == kind]

    @property
    def meta(self) -> dict[str, Any]:
        assert self.events and self.events[0].event == "meta", self.kinds
        data: dict[str, Any] = self.events[0].data
        return data

    @property
    def job_id(self) -> str:
        return str(self.meta["job_id"])

    @property
    def conversation_id(self) -> str:
        return str(self.meta["conversation_id"])

    @property
    def reply(self) -> str:
        """What the client was shown: its assistant deltas, in order."""
        return "".join(e.data["delta"] for e in self.of("assistant"))


async def open_turn(
    http: aiohttp.ClientSession, base_url: str, user: str, body: dict[str, Any]
) -> Turn:
    resp = await http.post(
        f"{base_url}/api/chat",
        json=body,
        headers=bearer(user) | {"Accept": "text/event-stream"},
    )
    assert resp.status == 200, await resp.text()
    turn = Turn(resp)
    first = await turn.next()
    assert first is not None and first.event == "meta", turn.kinds
    return turn


async def resume(
    http: aiohttp.ClientSession, base_url: str, user: str, job_id: str, last: int = -1
) -> list[SseEvent]:
    """Every event after `last`, from the job's replay log, to the end of the stream."""
    headers = bearer(user) | {"Last-Event-ID": str(last)}
    async with (
        asyncio.timeout(60),
        http.get(f"{base_url}/api/chat/jobs/{job_id}/events", headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return parse_sse(await resp.text())[0]


def assert_one_ordered_stream(events: list[SseEvent]) -> None:
    """Ids 0, 1, 2, … without gap or repeat; `meta` first; one terminal event, last."""
    ids = [int(e.id) if e.id is not None else None for e in events]
    assert ids == list(range(len(events))), ids
    assert events[0].event == "meta"
    assert [e.event for e in events].count("done") + [e.event for e in events].count("error") == 1
    assert events[-1].event in TERMINAL


def same_events(a: list[SseEvent], b: list[SseEvent]) -> bool:
    return [(e.id, e.event, e.data) for e in a] == [(e.id, e.event, e.data) for e in b]


async def saved(db: AsyncDatabase[dict[str, Any]], conversation_id: str) -> list[dict[str, Any]]:
    cursor = db["messages"].find({"conversation_id": conversation_id}).sort("seq", 1)
    return await cursor.to_list()


def summary(docs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(role, status, content) of each saved message, in conversation order."""
    return [(d["role"], d["status"], d["content"]) for d in docs]


async def sim_requests(http: aiohttp.ClientSession, sim_url: str, text: str) -> list[Any]:
    """The provider calls the simulator received whose last user message is `text`."""
    async with http.get(f"{sim_url}/_sim/requests") as resp:
        recorded = await resp.json()
    out = []
    for request in recorded:
        users = [m for m in request["body"].get("messages") or [] if m.get("role") == "user"]
        if users and users[-1].get("content") == text:
            out.append(request)
    return out
