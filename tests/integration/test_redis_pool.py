"""A burst of Redis commands larger than the connection pool waits for connections
rather than failing (real Redis)."""

from __future__ import annotations

import asyncio

from parley_common.settings import CommonSettings

from tests.support.infra import Infra


async def test_more_concurrent_commands_than_connections_all_succeed(infra: Infra):
    settings = CommonSettings(redis_url=infra.redis_url, redis_max_connections=2)
    redis = settings.redis_client()
    try:
        # Each BLPOP on an empty key holds its connection for its whole timeout.
        results = await asyncio.gather(
            *(redis.blpop([f"parley-pool-test-{i}"], timeout=0.05) for i in range(12))
        )
        assert results == [None] * 12
    finally:
        await redis.aclose()
