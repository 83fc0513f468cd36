"""Per-user limits, cluster-wide through Redis (every gateway replica shares them).

- Request rate: `RATE_LIMIT_PER_MINUTE` requests per user on the authenticated API, a
  sliding-window counter kept by the `limits` library (docs/adr/0005). Over it: 429
  with `Retry-After` (seconds until the window lets the next request in).
- Open streams: `MAX_STREAMS_PER_USER` chat turns (SSE or JSON) and resumed streams
  held at once. Each holds a lease in a sorted set (member: lease id, score: expiry by
  Redis's own clock); the lease is renewed while the stream is open and removed when
  it ends, and one left by a crashed gateway expires after `STREAM_LEASE_SECONDS`.

Both fail open: when Redis cannot be reached the request goes on (and is logged), so
a Redis outage does not take down the conversation endpoints that never need Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from parley_common.topology import Topology
from redis.exceptions import RedisError

from parley_gateway.errors import TooManyRequests

log = structlog.get_logger("parley_gateway.ratelimit")

# Seconds a client refused a stream slot is told to wait: streams end on their own
# within seconds to minutes, so a short, fixed hint is the honest answer.
STREAM_RETRY_AFTER = 5

# KEYS[1] the user's lease set; ARGV: limit, lease seconds, lease id. 1 when acquired.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 1)
return 1
"""

# KEYS[1] the lease set; ARGV: lease seconds, lease id. Pushes the lease's expiry on.
_RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]) + 1)
return 1
"""


# Lease renewals per pipeline.
RENEW_BATCH = 500


class RateLimits:
    def __init__(
        self,
        redis: aioredis.Redis,
        topo: Topology,
        *,
        per_minute: int,
        max_streams: int,
        lease_seconds: int,
    ) -> None:
        self._redis = redis
        self._topo = topo
        self._max_streams = max_streams
        self._lease_seconds = lease_seconds
        self._item = RateLimitItemPerMinute(per_minute) if per_minute > 0 else None
        # The limiter shares the gateway's connection pool (and so its client name).
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=topo.rate_limit_prefix,
            # limits types its **options as scalars; redis-py's Redis() takes the pool.
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
        )
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        # The stream leases this process holds (user key -> lease ids), renewed together
        # by one task rather than a task per stream.
        self._held: dict[str, set[str]] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def hit(self, user_id: str) -> None:
        """Count one request of `user_id`; TooManyRequests when over the rate."""
        if self._item is None:
            return
        try:
            if await self._limiter.hit(self._item, user_id):
                return
            stats = await self._limiter.get_window_stats(self._item, user_id)
        except (RedisError, OSError) as exc:
            log.warning("ratelimit.unavailable", error_type=type(exc).__name__)
            return
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyRequests(
            f"rate limit: at most {self._item.amount} requests per minute per user; "
            f"retry in {retry_after}s",
            retry_after=retry_after,
        )

    @contextlib.asynccontextmanager
    async def stream_slot(
        self, user_id: str, *, count_request: bool = False
    ) -> AsyncIterator[None]:
        """Hold one of the user's stream slots for the body of the `async with`;
        with `count_request`, also count the request (`hit`), in the same moment: the
        two Redis round trips overlap instead of adding up before a turn starts."""
        if self._max_streams <= 0:
            if count_request:
                await self.hit(user_id)
            yield
            return
        key = self._topo.user_streams(user_id)
        lease = secrets.token_hex(8)
        acquiring = self._try_acquire(key, lease)
        if count_request:
            counted, acquired = await asyncio.gather(
                self.hit(user_id), acquiring, return_exceptions=True
            )
            if isinstance(acquired, BaseException):
                raise acquired
            if isinstance(counted, BaseException):
                if acquired:
                    await self._release(key, lease)
                raise counted
        else:
            acquired = await acquiring
        if acquired is None:  # Redis unavailable: fail open, as the rate limit does
            yield
            return
        if not acquired:
            raise TooManyRequests(
                f"streams: at most {self._max_streams} open streams per user; "
                "wait for one to finish",
                code="too_many_streams",
                retry_after=STREAM_RETRY_AFTER,
            )
        self._held.setdefault(key, set()).add(lease)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._keep(), name="stream-lease-renewal")
        try:
            yield
        finally:
            leases = self._held.get(key)
            if leases is not None:
                leases.discard(lease)
                if not leases:
                    del self._held[key]
            await self._release(key, lease)

    async def _try_acquire(self, key: str, lease: str) -> bool | None:
        """Whether the lease was taken; None when Redis could not be asked."""
        try:
            return bool(
                await self._acquire(
                    keys=[key], args=[self._max_streams, self._lease_seconds, lease]
                )
            )
        except (RedisError, OSError) as exc:
            log.warning("ratelimit.streams_unavailable", error_type=type(exc).__name__)
            return None

    async def _release(self, key: str, lease: str) -> None:
        try:
            await self._redis.zrem(key, lease)
        except (RedisError, OSError):
            log.warning("ratelimit.release_failed")  # the lease expires on its own

    async def _keep(self) -> None:
        """Renew every lease held here, every third of a lease, in pipelined batches;
        ends when none is held (the next stream starts it again)."""
        while self._held:
            await asyncio.sleep(self._lease_seconds / 3)
            held = [(key, lease) for key, leases in self._held.items() for lease in leases]
            for start in range(0, len(held), RENEW_BATCH):
                pipe = self._redis.pipeline(transaction=False)
                for key, lease in held[start : start + RENEW_BATCH]:
                    await self._renew(keys=[key], args=[self._lease_seconds, lease], client=pipe)
                try:
                    await pipe.execute()
                except (RedisError, OSError):
                    log.warning("ratelimit.renew_failed", leases=len(held))

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
