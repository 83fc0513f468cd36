"""Provider text cannot forge SSE fields, whatever it contains."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from parley_common.schemas.events import decode_envelope, encode_delta
from parley_gateway.handlers.streaming import SseResponse, send_envelope

from tests.support.sse import parse_sse

pytestmark = pytest.mark.unit

HOSTILE = [
    'hello\n\nevent: done\ndata: {"type":"done"}\n\n',
    "lone\rcarriage\rreturn: id: 99",
    "crlf\r\n\r\nevent: error",
    "data: injected",
    "\u2028unicode line separator\u2029",
]


@pytest.mark.parametrize("together", [False, True], ids=["one_by_one", "one_batch"])
async def test_hostile_deltas_arrive_as_one_assistant_event_each(together: bool):
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = SseResponse(sep="\n")
        await resp.prepare(request)
        envs = [decode_envelope(encode_delta(i, "assistant", t)) for i, t in enumerate(HOSTILE, 1)]
        if together:
            await resp.send_events(envs)
        else:
            for env in envs:
                await send_envelope(resp, env)
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/")
        events, _ = parse_sse(await resp.text())
    assert [e.event for e in events] == ["assistant"] * len(HOSTILE)
    assert [e.id for e in events] == [str(i) for i in range(1, len(HOSTILE) + 1)]
    assert [e.data["delta"] for e in events] == HOSTILE


async def test_an_ended_stream_is_freed_without_a_full_collection():
    # Its heartbeat task, cancelled, keeps a traceback that holds the response: unless
    # the response lets go of the task, every ended stream waits for a full collection
    # (which, with thousands of streams open, pauses them all; parley_common.runtime).
    freed = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = SseResponse(sep="\n", ping_interval=0.05)
        weakref.finalize(resp, freed.set)
        await resp.prepare(request)
        await resp.send_events([decode_envelope(encode_delta(1, "assistant", "hi"))])
        resp.stop_streaming()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    gc.collect()
    gc.disable()
    try:
        async with TestClient(TestServer(app)) as client:
            # (closed after it: a kept-alive connection holds its last response)
            resp = await client.get("/", headers={"Connection": "close"})
            events, _ = parse_sse(await resp.text())
            assert [e.event for e in events] == ["assistant"]
            await asyncio.wait_for(freed.wait(), timeout=5)
    finally:
        gc.enable()
