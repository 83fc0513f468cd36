"""A job's event stream in Redis: PUBLISH for live readers, a list as replay log.

Every batch of events goes to both in one round trip (one script call): the
envelopes are appended to the log, and published as ONE channel message, the
envelopes newline-separated (`decode_batch`), so a reader pays per batch, not per
token. The replay log's index is not the sequence number (a redelivered job may
publish again); readers filter by `seq`.
"""

from __future__ import annotations

import asyncio
import bisect

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

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
        # Every EventBatch of this process publishes through it.
        self.flusher = Flusher(self)

    async def publish(self, job_id: str, raw: bytes) -> None:
        await self.publish_many(job_id, [raw])

    async def publish_many(self, job_id: str, raws: list[bytes]) -> None:
        if not raws:
            return
        pipe = self.pipeline()
        self.publish_in(pipe, job_id, raws)
        await pipe.execute()

    def pipeline(self) -> Pipeline:
        """A pipeline on this Redis, for `publish_in` and the registry's `*_in`."""
        return self._redis.pipeline(transaction=False)

    def publish_in(self, pipe: Pipeline, job_id: str, raws: list[bytes]) -> None:
        """Queue the same on `pipe`, so that it shares a round trip with other
        commands (the script's text goes along: nothing to reload after a restart)."""
        pipe.eval(
            _APPEND_AND_PUBLISH,
            1,
            self._topo.job_log(job_id),
            self._topo.job_channel(job_id),
            MAX_LOG_EVENTS,
            self._ttl,
            *raws,
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
    """One job's events, published in order, in batches: one channel message (one
    wake-up and one write per reading gateway) per batch rather than per token.

    The first event after a quiet spell goes out at once (time to first token is
    not delayed); events that follow within `window` seconds of a publish wait, at
    most `window`, and go out together. `window=0` publishes whatever arrived while
    the previous publish was in flight. Publishing never waits on Redis unless
    `MAX_PENDING` events are queued. `flush()` publishes what is pending at once and
    returns when everything is out (raising what a failed publish raised).

    The batches of every job of the process go to Redis through one `Flusher`: the
    ones due at the same moment share one pipelined write (module docstring).
    """

    MAX_PENDING = 512

    def __init__(self, events: JobEvents, job_id: str, window: float = 0.0) -> None:
        self._flusher = events.flusher
        self.job_id = job_id
        self.window = window
        self.pending: list[bytes] = []
        # Sent, waiting for Redis's answer.
        self.in_flight = False
        # In the flusher's queue (due now, or at a time slot).
        self.queued = False
        self.error: BaseException | None = None
        self.last_publish = float("-inf")
        self._idle: asyncio.Future[None] | None = None

    async def publish(self, raw: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.pending.append(raw)
        if not self.queued and not self.in_flight:
            self._flusher.schedule(self)
        if len(self.pending) >= self.MAX_PENDING:
            await self.flush()

    async def flush(self) -> None:
        while self.pending or self.in_flight:
            if self.error is not None:
                break
            if self.pending and not self.in_flight:
                self._flusher.schedule(self, now=True)
            if self._idle is None or self._idle.done():
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)
        if self.error is not None:
            raise self.error

    def sent(self, error: BaseException | None) -> None:
        """Called by the flusher when Redis has answered for this batch's last send."""
        self.in_flight = False
        if error is not None:
            self.error = error
            self.pending.clear()
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        if self.pending and self.error is None:
            self._flusher.schedule(self)


class Flusher:
    """Sends due batches, of every job, in one pipelined round trip; one round trip
    at a time, so a job's batches reach Redis in order, and whatever becomes due
    meanwhile goes in the next one.

    A batch whose window has passed is due at once. One still inside its window joins
    the latest round trip already planned in the last half of its window, else one
    is planned for when its window ends: the batches of concurrent streams travel
    together, a lone stream publishes once a window, and none waits longer than it.
    """

    def __init__(self, events: JobEvents) -> None:
        self._events = events
        # Due now, in the order they fell due (a dict as an ordered set).
        self._due: dict[EventBatch, None] = {}
        # Planned round trips: when (sorted), and the batches waiting for each.
        self._times: list[float] = []
        self._slots: dict[float, list[EventBatch]] = {}
        self._sender: asyncio.Task[None] | None = None

    def schedule(self, batch: EventBatch, now: bool = False) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        due = batch.last_publish + batch.window
        if now or due <= t or batch.window <= 0:
            # (One waiting for a slot may be due now: flush. The slot skips it then.)
            batch.queued = True
            self._due[batch] = None
            self._kick()
            return
        if batch.queued:
            return
        # Join the latest round trip already planned in the half window before this
        # batch falls due; else plan one for the moment it falls due.
        i = bisect.bisect_right(self._times, due)
        if i and self._times[i - 1] >= due - batch.window / 2:
            slot = self._times[i - 1]
        else:
            slot = due
            bisect.insort(self._times, slot)
            self._slots[slot] = []
            loop.call_at(slot, self._release, slot)
        batch.queued = True
        self._slots[slot].append(batch)

    def _release(self, slot: float) -> None:
        self._times.remove(slot)
        for batch in self._slots.pop(slot):
            if batch.queued:
                self._due[batch] = None
        self._kick()

    def _kick(self) -> None:
        if self._due and (self._sender is None or self._sender.done()):
            self._sender = asyncio.create_task(self._send_all(), name="event-flusher")

    async def _send_all(self) -> None:
        while self._due:
            due, self._due = self._due, {}
            batches = []
            for batch in due:
                batch.queued = False
                if batch.pending and not batch.in_flight:
                    batches.append(batch)
            if batches:
                await self._send(batches)

    async def _send(self, batches: list[EventBatch]) -> None:
        """One pipelined round trip: every batch's append-and-publish script call; a
        failed call comes back as its batch's error."""
        now = asyncio.get_running_loop().time()
        pipe = self._events.pipeline()
        for batch in batches:
            self._events.publish_in(pipe, batch.job_id, batch.pending)
            batch.pending = []
            batch.in_flight = True
            batch.last_publish = now
        results: list[object]
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for batch in batches:
                batch.sent(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for batch, result in zip(batches, results, strict=True):
            batch.sent(result if isinstance(result, BaseException) else None)
