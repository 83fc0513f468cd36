"""A job's event stream in Redis: PUBLISH for live readers, a list as replay log.

Every event goes to both in one round trip. The replay log's index is not the
sequence number (a redelivered job may publish again); readers filter by `seq`.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from parley_common.schemas.events import EventEnvelope, decode_envelope
from parley_common.topology import Topology

# A job's log holds at most this many events; older ones are trimmed.
MAX_LOG_EVENTS = 50_000


class JobEvents:
    def __init__(self, redis: aioredis.Redis, topo: Topology, ttl_seconds: int) -> None:
        self._redis = redis
        self._topo = topo
        self._ttl = ttl_seconds

    async def publish(self, job_id: str, raw: bytes) -> None:
        log = self._topo.job_log(job_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(log, raw)
        pipe.expire(log, self._ttl)
        pipe.publish(self._topo.job_channel(job_id), raw)
        await pipe.execute()

    async def publish_many(self, job_id: str, raws: list[bytes]) -> None:
        if not raws:
            return
        log = self._topo.job_log(job_id)
        channel = self._topo.job_channel(job_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(log, *raws)
        pipe.ltrim(log, -MAX_LOG_EVENTS, -1)
        pipe.expire(log, self._ttl)
        for raw in raws:
            pipe.publish(channel, raw)
        await pipe.execute()

    async def replay(self, job_id: str, after_seq: int = -1) -> list[EventEnvelope]:
        raws = await self._redis.lrange(self._topo.job_log(job_id), 0, -1)
        out: list[EventEnvelope] = []
        seen: set[int] = set()
        for raw in raws:
            env = decode_envelope(raw)
            if env.seq > after_seq and env.seq not in seen:
                seen.add(env.seq)
                out.append(env)
        out.sort(key=lambda e: e.seq)
        return out

    async def exists(self, job_id: str) -> bool:
        return bool(await self._redis.exists(self._topo.job_log(job_id)))
