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
from redis import exceptions as redis_exceptions

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


async def test_concurrent_jobs_each_get_every_event_in_order(infra: Infra):
    # Twenty jobs stream at once through the process's one flusher (their due batches
    # share pipelined round trips): each job's readers still see exactly its events,
    # in order, and its replay log holds all of them.
    topo = Topology(f"t{secrets.token_hex(4)}.")
    redis = aioredis.from_url(infra.redis_url)
    events = JobEvents(redis, topo, ttl_seconds=60)
    jobs = [f"job-{i}" for i in range(20)]
    pubsub = redis.pubsub()
    await pubsub.subscribe(*(topo.job_channel(j) for j in jobs))
    for _ in jobs:
        await pubsub.get_message(timeout=5)
    try:

        async def stream(job: str) -> None:
            batch = EventBatch(events, job, window=0.005)
            for seq in range(1, 41):
                await batch.publish(encode_delta(seq, "assistant", f"{job}:{seq} "))
                if seq % 3 == 0:
                    await asyncio.sleep(0)  # let other jobs and the flusher run
            await batch.flush()

        await asyncio.gather(*(stream(j) for j in jobs))
        seen: dict[str, list[int]] = {j: [] for j in jobs}
        async with asyncio.timeout(10):
            while any(len(s) < 40 for s in seen.values()):
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                if msg is None:
                    continue
                job = msg["channel"].decode().rsplit(":", 1)[-1]
                for env in decode_batch(msg["data"]):
                    assert env.payload()["delta"].startswith(f"{job}:")
                    seen[job].append(env.seq)
        for job in jobs:
            assert seen[job] == list(range(1, 41)), job
            assert [e.seq for e in await events.replay(job)] == list(range(1, 41))
    finally:
        await pubsub.aclose()
        await redis.delete(*(topo.job_log(j) for j in jobs))
        await redis.aclose()


async def test_a_failed_publish_reaches_its_own_job_only(infra: Infra):
    topo = Topology(f"t{secrets.token_hex(4)}.")
    redis = aioredis.from_url(infra.redis_url)
    events = JobEvents(redis, topo, ttl_seconds=60)
    # Redis refuses to append to a key of the wrong type (what a real failure of the
    # script looks like from here); the other job in the same round trip is unaffected.
    await redis.set(topo.job_log("job-broken"), b"not a list")
    try:
        broken = EventBatch(events, "job-broken", window=0.0)
        fine = EventBatch(events, "job-fine", window=0.0)
        await broken.publish(encode_delta(1, "assistant", "a"))
        await fine.publish(encode_delta(1, "assistant", "b"))
        with pytest.raises(redis_exceptions.ResponseError, match="WRONGTYPE"):
            await broken.flush()
        with pytest.raises(redis_exceptions.ResponseError):
            await broken.publish(encode_delta(2, "assistant", "c"))
        await fine.flush()
        assert [e.seq for e in await events.replay("job-fine")] == [1]
    finally:
        await redis.delete(topo.job_log("job-broken"), topo.job_log("job-fine"))
        await redis.aclose()
