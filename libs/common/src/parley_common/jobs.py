"""A job's registry entry in Redis: owner, conversation, provider, state.

Written by the gateway when it accepts a turn, marked finished by history when the
turn is saved. It outlives the replay log so that a late resume can be told the
job is finished and where its reply is saved, instead of just "unknown".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from parley_common.topology import Topology

# How long a job's registry entry is kept (seconds).
META_TTL = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class JobMeta:
    job_id: str
    user_id: str
    conversation_id: str
    provider: str
    state: str  # "running" or "finished"
    started_at: float


# KEYS[1] the job's entry, KEYS[2] its conversation's active set; ARGV: job id, entry
# TTL. Marks the job finished even before its entry is written (see `register`).
_FINISH = """
redis.call('HSET', KEYS[1], 'state', 'finished')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS as _FINISH; ARGV: job id, user id, conversation id, provider, started at, entry
# TTL, active-set TTL. A job already marked finished stays finished and unlisted.
_REGISTER = """
redis.call('HSET', KEYS[1], 'user_id', ARGV[2], 'conversation_id', ARGV[3],
           'provider', ARGV[4], 'started_at', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
if redis.call('HSETNX', KEYS[1], 'state', 'running') == 1 then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7]))
end
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobRegistry:
    def __init__(self, redis: aioredis.Redis, topo: Topology) -> None:
        self._redis = redis
        self._topo = topo

    async def register(
        self, job_id: str, user_id: str, conversation_id: str, provider: str, active_ttl: int
    ) -> None:
        """List the job as running. The gateway writes this while the job is being
        queued, so a job that fails at once may be finished first: `register` and
        `finish` give the same end state in either order."""
        pipe = self._redis.pipeline(transaction=False)
        self.register_in(pipe, job_id, user_id, conversation_id, provider, active_ttl)
        await pipe.execute()

    def register_in(
        self,
        pipe: Pipeline,
        job_id: str,
        user_id: str,
        conversation_id: str,
        provider: str,
        active_ttl: int,
    ) -> None:
        """`register`, queued on `pipe` (to share a round trip with other commands)."""
        pipe.eval(
            _REGISTER,
            2,
            self._topo.job_meta(job_id),
            self._topo.conversation_jobs(conversation_id),
            job_id,
            user_id,
            conversation_id,
            provider,
            f"{time.time():.3f}",
            META_TTL,
            active_ttl,
        )

    async def finish(self, job_id: str, conversation_id: str) -> None:
        """Mark the job finished and drop it from its conversation's active set."""
        pipe = self._redis.pipeline(transaction=False)
        self.finish_in(pipe, job_id, conversation_id)
        await pipe.execute()

    def finish_in(self, pipe: Pipeline, job_id: str, conversation_id: str) -> None:
        """`finish`, queued on `pipe`."""
        pipe.eval(
            _FINISH,
            2,
            self._topo.job_meta(job_id),
            self._topo.conversation_jobs(conversation_id),
            job_id,
            META_TTL,
        )

    async def get(self, job_id: str) -> JobMeta | None:
        raw = await self._redis.hgetall(self._topo.job_meta(job_id))
        if not raw or b"user_id" not in raw:
            return None
        d = {_text(k): _text(v) for k, v in raw.items()}
        return JobMeta(
            job_id=job_id,
            user_id=d["user_id"],
            conversation_id=d["conversation_id"],
            provider=d["provider"],
            state=d.get("state", "running"),
            started_at=float(d.get("started_at", "0")),
        )

    async def active(self, conversation_id: str) -> list[JobMeta]:
        ids = await self._redis.smembers(self._topo.conversation_jobs(conversation_id))
        out: list[JobMeta] = []
        for raw_id in sorted(ids):
            meta = await self.get(_text(raw_id))
            if meta is not None and meta.state == "running":
                out.append(meta)
        return out

    async def mark_deleted(self, conversation_id: str) -> None:
        """Record that a conversation was deleted (see `may_still_begin`)."""
        await self._redis.set(self._topo.conversation_deleted(conversation_id), b"1", ex=META_TTL)

    async def may_still_begin(self, job_id: str, conversation_id: str) -> bool:
        """For a turn result whose conversation is not stored: whether it may still be
        stored. The gateway queues a new conversation's first job while history stores
        the conversation, so a reply that fails at once can come first. True while the
        job is listed as running (a gateway that gave up on the turn has finished it)
        and the conversation was not deleted."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(self._topo.job_meta(job_id), "state")
        pipe.exists(self._topo.conversation_deleted(conversation_id))
        state, deleted = await pipe.execute()
        return state is not None and _text(state) == "running" and not deleted

    async def request_cancel(self, job_id: str, ttl: int) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._topo.job_cancel(job_id), b"1", ex=ttl)
        pipe.publish(self._topo.cancel_channel, job_id.encode())
        await pipe.execute()

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self._redis.exists(self._topo.job_cancel(job_id)))
