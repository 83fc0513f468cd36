"""Token events on their way to Redis: batched per publish window, in order, nothing
held back once the turn flushes (real Redis)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from parley_common.events import EventBatch, JobEvents
from parley_common.schemas.events import decode_batch, encode_delta
from parley_common.topology import Topology

from tests.support.infra import Infra


@pytest.fixture
async def events(infra: Infra) -> AsyncIterator[tuple[JobEvents, aioredis.client.PubSub, str]]:
    topo = Topology(f"t{secrets.token_hex(4)}.")
    redis = aioredis.from_url(infra.redis_url)
    job = "job-batch"
    pubsub = redis.pubsub()
    await pubsub.subscribe(topo.job_channel(job))
    await pubsub.get_message(timeout=5)  # the subscribe confirmation
    try:
        yield JobEvents(redis, topo, ttl_seconds=60), pubsub, job
    finally:
        await pubsub.aclose()
        await redis.delete(topo.job_log(job))
        await redis.aclose()


async def next_message(pubsub: aioredis.client.PubSub) -> list[int]:
    async with asyncio.timeout(5):
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if msg is not None:
                return [e.seq for e in decode_batch(msg["data"])]


async def test_first_delta_goes_out_at_once_and_the_next_ones_wait_for_the_window(events):
    log, pubsub, job = events
    batch = EventBatch(log, job, window=30.0)  # far longer than the test
    await batch.publish(encode_delta(1, "assistant", "a"))
    # Not held: it arrives although the window is 30 s and nothing was flushed.
    assert await next_message(pubsub) == [1]
    for seq in (2, 3, 4):
        await batch.publish(encode_delta(seq, "assistant", "x"))
        # A Redis round trip in between: without the window, each of these would
        # have been published on its own meanwhile.
        await log.exists(job)
    await batch.flush()  # the end of a turn: nothing stays pending
    assert await next_message(pubsub) == [2, 3, 4]
    # The replay log holds every event, in order, whatever the batching.
    assert [e.seq for e in await log.replay(job)] == [1, 2, 3, 4]
