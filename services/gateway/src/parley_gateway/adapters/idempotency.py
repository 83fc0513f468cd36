"""Idempotency-Key: a retried POST /api/chat attaches to the first request's job."""

from __future__ import annotations

import redis.asyncio as aioredis
from parley_common.topology import Topology

KEY_TTL = 24 * 3600

# Delete the key only if it still names this job (a retry may have claimed it since).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Idempotency:
    def __init__(self, redis: aioredis.Redis, topo: Topology) -> None:
        self._redis = redis
        self._topo = topo

    async def claim(self, user_id: str, key: str, job_id: str) -> str | None:
        """None when this request owns the key now; else the job id of the first request."""
        name = self._topo.idempotency(user_id, key)
        if await self._redis.set(name, job_id, nx=True, ex=KEY_TTL):
            return None
        existing = await self._redis.get(name)
        if existing is None:  # released between our SET and GET: try once more
            if await self._redis.set(name, job_id, nx=True, ex=KEY_TTL):
                return None
            existing = await self._redis.get(name)
        return existing.decode() if isinstance(existing, bytes) else existing

    async def release(self, user_id: str, key: str, job_id: str) -> None:
        await self._redis.eval(_RELEASE, 1, self._topo.idempotency(user_id, key), job_id)
