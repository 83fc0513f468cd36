"""The job registry gives the same end state whichever of `register` (the gateway,
while the job is being queued) and `finish` (history, when the result is saved)
reaches Redis first (real Redis)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from parley_common.jobs import JobRegistry
from parley_common.topology import Topology

from tests.support.infra import Infra


@pytest.fixture
async def registry(infra: Infra) -> AsyncIterator[tuple[JobRegistry, aioredis.Redis, Topology]]:
    topo = Topology(f"t{secrets.token_hex(4)}.")
    redis = aioredis.from_url(infra.redis_url)
    try:
        yield JobRegistry(redis, topo), redis, topo
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{topo.redis_prefix()}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_register_then_finish(registry):
    reg, _, _ = registry
    await reg.register("job-1", "alice", "conv-1", "groq", active_ttl=60)
    assert [m.job_id for m in await reg.active("conv-1")] == ["job-1"]
    await reg.finish("job-1", "conv-1")
    meta = await reg.get("job-1")
    assert meta is not None and meta.state == "finished" and meta.user_id == "alice"
    assert await reg.active("conv-1") == []


async def test_finish_before_register_stays_finished(registry):
    # A job that failed at once: history marked it finished before the gateway's
    # registration landed. It must not come back as running.
    reg, redis, topo = registry
    await reg.finish("job-2", "conv-2")
    await reg.register("job-2", "bob", "conv-2", "groq", active_ttl=60)
    meta = await reg.get("job-2")
    assert meta is not None and meta.state == "finished" and meta.user_id == "bob"
    assert await reg.active("conv-2") == []
    assert not await redis.sismember(topo.conversation_jobs("conv-2"), "job-2")
    # Nothing is left without an expiry.
    assert await redis.ttl(topo.job_meta("job-2")) > 0
