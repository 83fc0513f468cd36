"""The load generator: streamed turns through Parley's SSE API, or straight at the
simulator (the baseline), measured the same way.

A client's time to first token (TTFT) runs from sending the request to receiving
the first byte of the first text delta: an `assistant` event from Parley, a chunk
with non-empty `content` from the simulator. The body is read as it arrives and
parsed once the stream ends, so the generator spends little CPU per event.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

FIRST_PARLEY = re.compile(rb"(?:^|\n)event: assistant\n")
FIRST_DIRECT = re.compile(rb'"delta":\{"content":"[^"]')


@dataclass(slots=True)
class Turn:
    ttft: float  # seconds; 0 when no token arrived
    total: float
    deltas: int
    error: str | None = None


def directives(tokens: int, delay_ms: int) -> str:
    parts = [f"[[sim:tokens={tokens}]]"]
    if delay_ms:
        parts.append(f"[[sim:delay-ms={delay_ms}]]")
    return "bench " + " ".join(parts)


async def _read(
    resp: aiohttp.ClientResponse, first: re.Pattern[bytes], started: float
) -> tuple[bytes, float]:
    buf = bytearray()
    ttft = 0.0
    async for chunk in resp.content.iter_any():
        # Look at the new bytes and the few before them (a marker may straddle reads).
        if not ttft and first.search(buf[-48:] + chunk):
            ttft = time.perf_counter() - started
        buf += chunk
    return bytes(buf), ttft


def parse_sse(body: bytes) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    for block in body.split(b"\n\n"):
        etype, data = "message", []
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                etype = line[7:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:].decode())
        if data:
            events.append((etype, "\n".join(data)))
    return events


async def _stream(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    auth: str,
    first: re.Pattern[bytes],
) -> tuple[bytes, float, float] | Turn:
    """POST and read the whole stream: (body, TTFT, total seconds), or a failed Turn."""
    started = time.perf_counter()
    try:
        async with http.post(url, json=body, headers={"Authorization": auth}) as resp:
            if resp.status != 200:
                return Turn(0.0, time.perf_counter() - started, 0, f"HTTP {resp.status}")
            raw, ttft = await _read(resp, first, started)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Turn(0.0, time.perf_counter() - started, 0, type(exc).__name__)
    return raw, ttft, time.perf_counter() - started


async def parley_turn(
    http: aiohttp.ClientSession,
    url: str,
    auth: str,
    text: str,
    expect: int,
    thread: dict[str, str] | None = None,
) -> Turn:
    """One streamed turn; with `thread`, in the conversation it names (the first turn
    starts one and names it there), as a chat continues."""
    request = {"text": text, "provider": "groq"}
    if thread is not None and "conversation_id" in thread:
        request["conversation_id"] = thread["conversation_id"]
    got = await _stream(http, f"{url}/api/chat/stream", request, auth, FIRST_PARLEY)
    if isinstance(got, Turn):
        return got
    body, ttft, total = got
    events = parse_sse(body)
    deltas = sum(1 for etype, _ in events if etype == "assistant")
    if not events or events[-1][0] != "done":
        last = events[-1] if events else ("nothing", "")
        return Turn(ttft, total, deltas, f"ended with {last[0]}: {last[1][:200]}")
    done = orjson.loads(events[-1][1])
    reply = done["reply"]
    if thread is not None:
        thread["conversation_id"] = done["conversation_id"]
    if len(reply.split()) != expect:
        return Turn(ttft, total, deltas, f"reply has {len(reply.split())} words, not {expect}")
    return Turn(ttft, total, deltas)


async def direct_turn(
    http: aiohttp.ClientSession,
    base_url: str,
    text: str,
    expect: int,
    *,
    model: str = "sim-model",
    key: str = "sim-key",
) -> Turn:
    """The baseline: the same streamed completion (OpenAI Chat Completions at
    `base_url`), asked of the simulator directly, or of a proxy in front of it."""
    request = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": text}],
    }
    got = await _stream(
        http, f"{base_url}/chat/completions", request, f"Bearer {key}", FIRST_DIRECT
    )
    if isinstance(got, Turn):
        return got
    body, ttft, total = got
    deltas = 0
    for line in body.split(b"\n"):
        if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
            deltas += 1
    if not body.rstrip().endswith(b"data: [DONE]"):
        return Turn(ttft, total, deltas, "stream did not end with [DONE]")
    if deltas != expect:
        return Turn(ttft, total, deltas, f"{deltas} deltas, not {expect}")
    return Turn(ttft, total, deltas)


@dataclass
class Run:
    """Closed-loop load: `concurrency` clients, each starting its next turn as soon as
    the previous one ends, until `turns` turns have been started."""

    turns: list[Turn] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ok = [t for t in self.turns if t.error is None]
        ttfts = sorted(t.ttft * 1000 for t in ok if t.ttft)
        errors = [t.error for t in self.turns if t.error is not None]
        return {
            "turns": len(self.turns),
            "errors": len(errors),
            "error_samples": sorted(set(errors))[:5],
            "seconds": round(self.seconds, 3),
            "turns_per_s": round(len(ok) / self.seconds, 1) if self.seconds else 0.0,
            "deltas_per_s": round(sum(t.deltas for t in ok) / self.seconds, 1)
            if self.seconds
            else 0.0,
            "ttft_ms": {
                "p50": round(pct(ttfts, 0.50), 2),
                "p90": round(pct(ttfts, 0.90), 2),
                "p99": round(pct(ttfts, 0.99), 2),
                "mean": round(statistics.fmean(ttfts), 2) if ttfts else 0.0,
            },
            "turn_ms_p50": round(pct(sorted(t.total * 1000 for t in ok), 0.5), 1),
        }


async def closed_loop(
    concurrency: int, turns: int, one: Callable[[int], Awaitable[Turn]], ramp: float = 0.0
) -> Run:
    """`ramp`: the clients start evenly spread over that many seconds (client k after
    k * ramp / concurrency), as users arrive, rather than all in the same
    millisecond; with a ramp of one turn's length they then stay spread out."""
    run = Run()
    started_turns = 0

    async def client(k: int) -> None:
        nonlocal started_turns
        if ramp:
            await asyncio.sleep(k * ramp / concurrency)
        while started_turns < turns:
            i = started_turns
            started_turns += 1
            run.turns.append(await one(i))

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    run.seconds = time.perf_counter() - started
    return run


def pct(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )
