"""Job events from Redis for every stream of this gateway process, on one connection.

`EventHub` owns one pub/sub connection. `subscribe(job_id)` returns once Redis
has confirmed the subscription, so a job published afterwards cannot emit an
event this process misses. Each subscription has a bounded buffer; when it
overflows (a slow reader) the subscription is marked stale and its reader
re-reads the job's replay log from the last sequence number it delivered.
Events are therefore delivered in order, without duplicates and without gaps,
while the log lasts.

When the pub/sub connection drops, whatever is published until Redis confirms
the re-subscription reaches this process only through the replay logs. So every
subscription is marked stale twice: at once when the loss is noticed (its
reader re-reads the log, and if Redis cannot be reached ends its stream with
`StreamLost`, which the client can resume), and again when Redis confirms the
re-subscription, wherever redis-py reconnected (it may do so inside any read).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from parley_common.events import JobEvents
from parley_common.schemas import EventEnvelope, decode_batch
from parley_common.topology import Topology
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from parley_gateway.metrics import STREAM_RESYNCS

log = structlog.get_logger("parley_gateway.events")

SUBSCRIBE_TIMEOUT = 5.0


class StreamLost(Exception):
    """The job's events can no longer be followed (log expired or Redis gone)."""


class Subscription:
    """One stream's view of a job's channel: the channel messages (each a batch of
    envelopes) that arrived and are not read yet, in a bounded buffer."""

    def __init__(self, hub: EventHub, job_id: str, channel: str, maxsize: int) -> None:
        self.hub = hub
        self.job_id = job_id
        self.channel = channel
        self._maxsize = maxsize
        self._pending: deque[bytes] = deque()
        self._stale = False
        self._waiter: asyncio.Future[None] | None = None
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def offer(self, raw: bytes) -> None:
        if len(self._pending) >= self._maxsize:
            self.mark_stale()
            return
        self._pending.append(raw)
        self._wake()

    def mark_stale(self) -> None:
        self._stale = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def events(
        self, after_seq: int = -1, *, catch_up: bool = True
    ) -> AsyncIterator[EventEnvelope]:
        """Events with seq > after_seq, in order, ending after `done` or `error`."""
        async for batch in self.batches(after_seq, catch_up=catch_up):
            for env in batch:
                yield env

    async def batches(
        self, after_seq: int = -1, *, catch_up: bool = True
    ) -> AsyncIterator[list[EventEnvelope]]:
        """The same events, in the batches they arrived in (so a reader can write each
        batch at once); the last batch ends with `done` or `error`.

        `catch_up` first reads what was published before this subscription existed,
        from the replay log; a new turn's stream, subscribed before its job was
        queued, has nothing there to read but the `meta` event it already holds."""
        last = after_seq
        if catch_up:
            out, last, ended = _take(await self.hub.replay(self.job_id, last), last)
            if out:
                yield out
            if ended:
                return
        while True:
            if self._stale:
                self._stale = False
                self._pending.clear()
                STREAM_RESYNCS.inc()
                out, last, ended = _take(await self.hub.replay(self.job_id, last), last)
                if out:
                    yield out
                if ended:
                    return
                continue
            if not self._pending:
                # Nothing buffered: wait for a message or for the stream to go stale.
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            out = []
            ended = False
            while self._pending and not self._stale and not ended:
                for env in decode_batch(self._pending.popleft()):
                    if env.seq <= last:
                        continue  # already delivered (replayed, or published twice)
                    if env.seq > last + 1:
                        self.mark_stale()  # a gap: fill it from the log
                        break
                    last = env.seq
                    out.append(env)
                    if env.terminal:
                        ended = True
                        break
            if out:
                yield out
            if ended:
                return


def _take(envs: list[EventEnvelope], last: int) -> tuple[list[EventEnvelope], int, bool]:
    """Replayed events after `last`, up to and including a terminal one."""
    out: list[EventEnvelope] = []
    for env in envs:
        if env.seq <= last:
            continue
        last = env.seq
        out.append(env)
        if env.terminal:
            return out, last, True
    return out, last, False


class EventHub:
    def __init__(
        self, redis: aioredis.Redis, topo: Topology, buffer_events: int, log_ttl: int
    ) -> None:
        self._redis = redis
        self._topo = topo
        self._buffer = buffer_events
        self._log = JobEvents(redis, topo, ttl_seconds=log_ttl)
        self._pubsub = redis.pubsub()
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    @property
    def log(self) -> JobEvents:
        return self._log

    async def start(self) -> None:
        await self._pubsub.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    async def replay(self, job_id: str, after_seq: int) -> list[EventEnvelope]:
        try:
            return await self._log.replay(job_id, after_seq)
        except RedisError as exc:
            raise StreamLost("event store unavailable") from exc

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        channel = self._topo.job_channel(job_id)
        sub = Subscription(self, job_id, channel, self._buffer)
        first = not self._subs[channel]
        self._subs[channel].add(sub)
        try:
            if first:
                await self._pubsub.subscribe(channel)
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                    await sub.confirmed
            else:
                sub.confirmed.set_result(None)
            yield sub
        finally:
            subs = self._subs.get(channel)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[channel]
                    with contextlib.suppress(RedisError, ConnectionError):
                        await self._pubsub.unsubscribe(channel)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                # Blocking read (no per-message timer): cancellation still ends it.
                msg = await self._pubsub.get_message(timeout=None)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, OSError, RedisError) as exc:
                log.warning("events.connection_lost", error_type=type(exc).__name__)
                self._mark_all_stale()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                await self._reconnect()
                continue
            if msg is None:
                continue
            kind = msg.get("type")
            channel = msg.get("channel")
            if isinstance(channel, bytes):
                channel = channel.decode()
            if kind == "message":
                for sub in tuple(self._subs.get(channel, ())):
                    sub.offer(msg["data"])
            elif kind == "subscribe":
                subs = tuple(self._subs.get(channel, ()))
                if not subs:
                    # Re-subscribed on reconnect although its last reader left while the
                    # connection was down (its unsubscribe was lost): drop it now.
                    with contextlib.suppress(RedisError, ConnectionError):
                        await self._pubsub.unsubscribe(channel)
                for sub in subs:
                    if not sub.confirmed.done():
                        sub.confirmed.set_result(None)
                    else:
                        # Subscribed again after a reconnect: what was published while
                        # the connection was down is only in the replay log.
                        sub.mark_stale()

    def _mark_all_stale(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.mark_stale()

    async def _reconnect(self) -> None:
        """Connect again (redis-py then re-subscribes every channel; the confirmations
        mark the subscriptions stale). A failure is retried by the next read."""
        with contextlib.suppress(RedisConnectionError, OSError, RedisError):
            await self._pubsub.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
