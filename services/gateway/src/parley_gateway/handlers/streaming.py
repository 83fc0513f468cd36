"""Relaying a job's events to a client: as SSE, or collected into one JSON reply."""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse
from parley_common.schemas import ErrorEvent, EventEnvelope

from parley_gateway.adapters.event_stream import StreamLost, Subscription
from parley_gateway.context import Services
from parley_gateway.drain import moved_request, resume_event
from parley_gateway.errors import BadGateway, GatewayTimeout
from parley_gateway.metrics import FIRST_EVENT_SECONDS, STREAM_SECONDS, STREAMS
from parley_gateway.middlewares import REQUEST_ID

log = structlog.get_logger("parley_gateway.streaming")

TOKEN_TYPES = frozenset({"assistant", "reasoning"})


def terminal_timeout(svc: Services) -> float:
    """The longest a client waits for `done`/`error`: queue deadline plus generation."""
    return float(svc.settings.job_deadline_seconds) + 60.0


async def collect(
    svc: Services, sub: Subscription, after_seq: int, conversation_id: str = ""
) -> web.Response:
    deadline = asyncio.timeout(terminal_timeout(svc))
    try:
        async with deadline, svc.drain.track(deadline):
            async for env in sub.events(after_seq=after_seq):
                if env.type == "done":
                    data = env.payload()
                    return web.json_response(
                        {
                            "reply": data["reply"],
                            "conversation_id": data["conversation_id"],
                            "provider": data["provider"],
                        }
                    )
                if env.type == "error":
                    data = env.payload()
                    raise BadGateway(data["error"], code=data.get("code") or "provider_error")
    except TimeoutError as exc:
        if svc.drain.moved(deadline):
            raise moved_request(sub.job_id, conversation_id) from exc
        raise GatewayTimeout(f"no reply within {terminal_timeout(svc):.0f}s") from exc
    except StreamLost as exc:
        raise GatewayTimeout(f"lost the reply stream: {exc}") from exc
    raise GatewayTimeout("the reply stream ended without a result")


async def relay(
    request: web.Request,
    svc: Services,
    sub: Subscription,
    *,
    conversation_id: str,
    provider: str,
    after_seq: int,
    first: EventEnvelope | None = None,
    catch_up: bool = False,
) -> web.StreamResponse:
    """Stream the job's events after `after_seq` as SSE until `done` or `error`.

    `first` is an event the caller holds already (a new turn's `meta`); the job's
    replay log is read first when there is none or when `catch_up` is set (the job
    may have been queued before this stream was subscribed).

    A client that goes away loses nothing: the job goes on and its reply is saved
    (unless CANCEL_ON_DISCONNECT is set, which cancels it).
    """
    resp = SseResponse(
        sep="\n",
        allow_all_methods=True,
        ping_interval=svc.settings.sse_ping_seconds,
        send_timeout=svc.settings.sse_send_timeout,
        headers={"X-Request-ID": request[REQUEST_ID]},
    )
    await resp.prepare(request)
    STREAMS.inc()
    started = time.perf_counter()
    # Time to first token and stream duration are a new turn's (not a resumed stream's).
    waiting_first_token = first is not None
    finished = False
    outcome = "client_gone"
    try:
        if first is not None:
            await send_envelope(resp, first)
            after_seq = max(after_seq, first.seq)
        deadline = asyncio.timeout(terminal_timeout(svc))
        try:
            async with deadline, svc.drain.track(deadline):
                async for batch in sub.batches(
                    after_seq=after_seq, catch_up=catch_up or first is None
                ):
                    if waiting_first_token and any(e.type in TOKEN_TYPES for e in batch):
                        FIRST_EVENT_SECONDS.labels(provider).observe(time.perf_counter() - started)
                        waiting_first_token = False
                    await resp.send_events(batch)
                    if batch[-1].terminal:
                        finished = True
                        outcome = batch[-1].type
        except (TimeoutError, StreamLost) as exc:
            if isinstance(exc, TimeoutError) and not deadline.expired():
                raise  # a stalled write, not the job's deadline
            lost = isinstance(exc, StreamLost)
            err = ErrorEvent(
                error=(
                    "lost the live stream; resume it with GET /api/chat/jobs/{id}/events"
                    if lost
                    else "no reply in time; it is saved if it completes"
                ),
                conversation_id=conversation_id,
                provider=provider,
                code="stream_lost" if lost else "timeout",
            )
            if not lost and svc.drain.moved(deadline):  # this gateway is shutting down
                err = resume_event(sub.job_id, conversation_id, provider)
            outcome = err.code or "error"
            await resp.send(err.model_dump_json(), event="error")
            finished = True
    except (ConnectionError, TimeoutError):
        log.info("stream.client_gone", job_id=sub.job_id, reason="write failed or stalled")
    finally:
        STREAMS.dec()
        if first is not None:
            STREAM_SECONDS.labels(provider, outcome).observe(time.perf_counter() - started)
        resp.stop_streaming()
        if not finished and svc.settings.cancel_on_disconnect:
            log.info("stream.cancel_on_disconnect", job_id=sub.job_id)
            await svc.registry.request_cancel(sub.job_id, svc.settings.job_deadline_seconds)
    if finished:
        await _finish(request, resp, svc, sub.job_id)
    return resp


async def _finish(request: web.Request, resp: SseResponse, svc: Services, job_id: str) -> None:
    """End the response, but never wait on a client that stopped reading."""
    try:
        async with asyncio.timeout(svc.settings.sse_send_timeout):
            await resp.write_eof()
    except (ConnectionError, TimeoutError):
        log.info("stream.client_gone", job_id=job_id, reason="stalled at the end")
        if request.transport is not None:
            request.transport.abort()


async def send_envelope(resp: SseResponse, env: EventEnvelope) -> None:
    await resp.send_events([env])


class SseResponse(EventSourceResponse):
    """aiohttp-sse's response (headers, pings, send timeout) with a batch send: the
    events that arrived together leave in one write. Envelope data is one line of
    JSON and `id`/`event` are a number and a known type, so the frames need no
    escaping beyond what `send` would do for a stray line break."""

    _transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        transport = request.transport
        self._transport = transport if isinstance(transport, asyncio.Transport) else None
        return writer

    def stop_streaming(self) -> None:
        """Stop the heartbeats (idempotent), then drop the finished heartbeat task.

        A cancelled task keeps its CancelledError, whose traceback holds the heartbeat
        coroutine's frame and through it this response, which holds the task: a
        reference cycle per stream, which only a full collection would free (about
        2 KiB a stream, and the full collections they call for pause every stream of
        the process; `parley_common.runtime`). Without the task, a stream's objects
        are freed as soon as it ends."""
        task = self._ping_task
        if task is None:
            return
        super().stop_streaming()
        task.add_done_callback(self._forget_ping_task)

    def _forget_ping_task(self, task: asyncio.Task[None]) -> None:
        if self._ping_task is task:
            self._ping_task = None

    def _fits(self, size: int) -> bool:
        """Whether `size` more bytes stay under the socket buffer's high-water mark: such
        a write is handed to the kernel or buffered, and cannot wait on the client."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        _, high = transport.get_write_buffer_limits()
        return transport.get_write_buffer_size() + size <= high

    async def send_events(self, envs: list[EventEnvelope]) -> None:
        parts = []
        for env in envs:
            data = env.data
            if "\n" in data or "\r" in data:
                data = "\ndata: ".join(self.LINE_SEP_EXPR.split(data))
            parts.append(f"id: {env.seq}\nevent: {env.type}\ndata: {data}\n\n")
        payload = "".join(parts).encode()
        try:
            if self._fits(len(payload)):
                await self.write(payload)  # no timer needed: nothing to wait for
                return
            async with asyncio.timeout(self._send_timeout):
                await self.write(payload)
        except ConnectionResetError:
            self.stop_streaming()
            raise
        except TimeoutError:
            self.stop_streaming()
            self._abort_transport()
            raise
