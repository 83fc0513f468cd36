"""Graceful shutdown: open streams finish, or are handed to another gateway.

On SIGTERM aiohttp first closes the listening socket (no new connections, so no new
turns) and closes idle keep-alive connections; then `Drain.drain` runs (an
`on_shutdown` hook). It lets the open streams run for up to SHUTDOWN_GRACE_SECONDS.
A stream still open after that is ended with an `error` event, code
`gateway_shutdown` and no id, that tells its client to resume the job with
`GET /api/chat/jobs/{job_id}/events` and `Last-Event-ID` on another gateway (the
replay log is in Redis, so any gateway can). A JSON request still waiting gets a 503
naming the conversation where the reply will be saved. The generation itself goes
on in its worker, whatever happens to this gateway.

Each stream registers its deadline (`asyncio.Timeout`) here; ending it is bringing
that deadline forward to now, so a stream pays nothing per event for this.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from parley_common.schemas import ErrorEvent

from parley_gateway.errors import Unavailable
from parley_gateway.metrics import SHUTDOWN_STREAMS

log = structlog.get_logger("parley_gateway.drain")

# After the grace, how long the streams that were told to move get to write that event.
MOVE_SECONDS = 2.0
SHUTDOWN_CODE = "gateway_shutdown"


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._grace_over = False
        self._open: set[asyncio.Timeout] = set()
        self._moved: set[asyncio.Timeout] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def open_streams(self) -> int:
        return len(self._open)

    @contextlib.asynccontextmanager
    async def track(self, deadline: asyncio.Timeout) -> AsyncIterator[None]:
        """Register a stream (or a waiting JSON request) for the time it is inside its
        deadline's `async with`."""
        self._open.add(deadline)
        self._idle.clear()
        if self._grace_over:
            self._move(deadline)
        try:
            yield
        finally:
            self._open.discard(deadline)
            if not self._open:
                self._idle.set()

    def _move(self, deadline: asyncio.Timeout) -> None:
        self._moved.add(deadline)
        SHUTDOWN_STREAMS.inc()
        deadline.reschedule(asyncio.get_running_loop().time())

    def moved(self, deadline: asyncio.Timeout) -> bool:
        """Whether this deadline expired because the gateway is shutting down."""
        return deadline in self._moved

    async def drain(self, grace: float) -> None:
        self.draining = True
        if self._open:
            log.info("gateway.draining", streams=len(self._open), grace_s=grace)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()
        # From here on, a stream that is still open, or that opens now (its request came
        # in before the signal), is told to resume elsewhere.
        self._grace_over = True
        left = list(self._open)
        for deadline in left:
            self._move(deadline)
        if left:
            log.warning("gateway.streams_moved", streams=len(left))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MOVE_SECONDS):
                    await self._idle.wait()
        log.info("gateway.drained", moved=len(left))


def resume_event(job_id: str, conversation_id: str, provider: str) -> ErrorEvent:
    """What a stream still open at the end of the grace is told (then it ends)."""
    return ErrorEvent(
        error=(
            "this gateway is shutting down; the reply goes on: resume it with "
            f"GET /api/chat/jobs/{job_id}/events and Last-Event-ID"
        ),
        conversation_id=conversation_id,
        provider=provider,
        code=SHUTDOWN_CODE,
    )


def moved_request(job_id: str, conversation_id: str) -> Unavailable:
    """What a JSON request still waiting at the end of the grace is answered."""
    err = Unavailable(
        "this gateway is shutting down; the reply goes on and is saved in conversation "
        f"{conversation_id} (GET /api/chat/messages), or follow it with "
        f"GET /api/chat/jobs/{job_id}/events",
        code=SHUTDOWN_CODE,
        retry_after=1,
    )
    err.extra = {"conversation_id": conversation_id, "job_id": job_id}
    return err
