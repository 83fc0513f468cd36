"""A job's event stream in Redis: PUBLISH for live readers, a list as replay log.

Every batch of events goes to both in one round trip (one script call): the
envelopes are appended to the log, and published as ONE channel message, the
envelopes newline-separated (`decode_batch`), so a reader pays per batch, not per
token. The replay log's index is not the sequence number (a redelivered job may
publish again); readers filter by `seq`.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from parley_common.schemas.events import EventEnvelope, decode_envelope
from parley_common.topology import Topology

# A job's log holds at most this many events; older ones are trimmed.
MAX_LOG_EVENTS = 50_000

# KEYS[1] the job's log; ARGV: channel, max log length, ttl seconds, envelope...
_APPEND_AND_PUBLISH = """
local n = redis.call('RPUSH', KEYS[1], unpack(ARGV, 4))
if n > tonumber(ARGV[2]) then redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('PUBLISH', ARGV[1], table.concat(ARGV, '\\n', 4))
"""


class JobEvents:
    def __init__(self, redis: aioredis.Redis, topo: Topology, ttl_seconds: int) -> None:
        self._redis = redis
        self._topo = topo
        self._ttl = ttl_seconds
        self._append = redis.register_script(_APPEND_AND_PUBLISH)

    async def publish(self, job_id: str, raw: bytes) -> None:
        await self.publish_many(job_id, [raw])

    async def publish_many(self, job_id: str, raws: list[bytes]) -> None:
        if not raws:
            return
        await self._append(
            keys=[self._topo.job_log(job_id)],
            args=[self._topo.job_channel(job_id), MAX_LOG_EVENTS, self._ttl, *raws],
        )

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


class EventBatch:
    """One job's events, published in order, in batches: one Redis round trip (and
    one channel message, one wake-up and one write per reading gateway) per batch
    rather than per token.

    The first event after a quiet spell goes out at once (time to first token is
    not delayed); events that follow within `window` seconds of a publish wait for
    the window to pass and go out together. `window=0` publishes whatever arrived
    while the previous publish was in flight. Publishing never waits on Redis
    unless `MAX_PENDING` events are queued. `flush()` publishes what is pending at
    once and returns when everything is out (raising what a failed publish raised).
    """

    MAX_PENDING = 512

    def __init__(self, events: JobEvents, job_id: str, window: float = 0.0) -> None:
        self._events = events
        self._job_id = job_id
        self._window = window
        self._pending: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._last_publish = float("-inf")
        self._urgent = False
        self._wakeup: asyncio.Future[None] | None = None

    async def publish(self, raw: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._pending.append(raw)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        if len(self._pending) >= self.MAX_PENDING:
            await self.flush()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            wait = self._last_publish + self._window - loop.time()
            if wait > 0 and not self._urgent:
                self._wakeup = wakeup = loop.create_future()
                timer = loop.call_later(wait, _wake, wakeup)
                try:
                    await wakeup
                finally:
                    timer.cancel()
                    self._wakeup = None
            batch, self._pending = self._pending, []
            self._last_publish = loop.time()
            try:
                await self._events.publish_many(self._job_id, batch)
            except Exception as exc:  # surfaced by the next publish() or flush()
                self._error = exc
                self._pending.clear()
                return

    async def flush(self) -> None:
        self._urgent = True
        if self._wakeup is not None:
            _wake(self._wakeup)
        try:
            if self._task is not None:
                await asyncio.shield(self._task)
        finally:
            self._urgent = False
        if self._error is not None:
            raise self._error


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
