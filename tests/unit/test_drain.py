"""The gateway's shutdown drain (`parley_gateway.drain`), without I/O: streams that end
within the grace are left alone, those still open are ended through their own deadline,
and one that starts after the grace is over is ended at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from parley_gateway.drain import SHUTDOWN_CODE, Drain, moved_request, resume_event

pytestmark = pytest.mark.unit


async def stream(drain: Drain, lasts: float) -> tuple[str, asyncio.Timeout]:
    """A stand-in for a relayed stream: runs `lasts` seconds inside its deadline."""
    deadline = asyncio.timeout(600)
    try:
        async with deadline, drain.track(deadline):
            await asyncio.sleep(lasts)
    except TimeoutError:
        return ("moved" if drain.moved(deadline) else "timeout"), deadline
    return "finished", deadline


async def test_no_open_stream_means_no_wait():
    drain = Drain()
    started = time.monotonic()
    await drain.drain(grace=30)
    assert drain.draining and time.monotonic() - started < 0.5


async def test_streams_within_the_grace_finish_and_the_rest_are_moved():
    drain = Drain()
    short = asyncio.create_task(stream(drain, 0.1))
    long = asyncio.create_task(stream(drain, 60))
    await asyncio.sleep(0)  # both registered
    assert drain.open_streams == 2
    started = time.monotonic()
    await drain.drain(grace=0.5)
    took = time.monotonic() - started
    assert 0.5 <= took < 2, took
    assert (await short)[0] == "finished"
    outcome, deadline = await long
    assert outcome == "moved" and drain.moved(deadline)
    assert drain.open_streams == 0


async def test_drain_returns_as_soon_as_the_last_stream_ends():
    drain = Drain()
    task = asyncio.create_task(stream(drain, 0.2))
    await asyncio.sleep(0)
    started = time.monotonic()
    await drain.drain(grace=30)
    assert time.monotonic() - started < 2
    assert (await task)[0] == "finished"


async def test_a_stream_that_starts_after_the_grace_is_moved_at_once():
    drain = Drain()
    await drain.drain(grace=0)
    started = time.monotonic()
    outcome, _ = await stream(drain, 60)
    assert outcome == "moved" and time.monotonic() - started < 1


async def test_an_ordinary_deadline_is_not_taken_for_a_shutdown():
    drain = Drain()
    deadline = asyncio.timeout(0.05)
    with pytest.raises(TimeoutError):
        async with deadline, drain.track(deadline):
            await asyncio.sleep(5)
    assert not drain.moved(deadline)


def test_what_the_client_is_told():
    event = resume_event("job-0123", "u:web:conv-1", "groq")
    assert event.code == SHUTDOWN_CODE == "gateway_shutdown"
    assert "GET /api/chat/jobs/job-0123/events" in event.error
    err = moved_request("job-0123", "u:web:conv-1")
    assert err.status == 503 and err.code == SHUTDOWN_CODE
    assert err.body()["conversation_id"] == "u:web:conv-1" and err.headers["Retry-After"]
