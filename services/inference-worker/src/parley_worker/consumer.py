"""Consumes chat jobs, one queue per provider, and publishes each turn's result.

A job is acked only after its `TurnResult` is confirmed by the broker, so a
worker that dies mid-turn leaves the job to be redelivered. A job that cannot be
parsed is rejected without requeue and goes to the dead-letter queue.

Stopping (SIGTERM, `Worker.stop`): the consumers are cancelled first, so no new job
arrives; running turns get SHUTDOWN_GRACE_SECONDS to finish; a turn still running
after that is cancelled and its job is handed back (nack, requeue) for another
worker. The peer treats it as any redelivered job: generated again if nothing had
streamed, else ended as `worker_lost` with the partial reply saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import aio_pika
import aiormq
import redis.asyncio as aioredis
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from parley_common.amqp import (
    Exchanges,
    declare_exchanges,
    declare_job_queue,
    job_message,
    log_context,
    open_channel,
    result_message,
)
from parley_common.events import JobEvents
from parley_common.jobs import JobRegistry
from parley_common.providers import IMPLEMENTED
from parley_common.schemas import ChatJob, TurnResult, TurnStatus, decode_batch
from parley_common.topology import TURN_CANCELLED, TURN_COMPLETED, TURN_FAILED, Topology
from pydantic import ValidationError
from redis.exceptions import RedisError

from parley_worker.metrics import ERRORS, FALLBACKS, IN_FLIGHT, QUEUE_WAIT_SECONDS, RETURNED
from parley_worker.providers.base import Provider, Timeouts
from parley_worker.providers.registry import build_provider
from parley_worker.settings import WorkerSettings
from parley_worker.tools.web import WebTools
from parley_worker.turn import Outcome, RetryPolicy, TurnRunner

log = structlog.get_logger("parley_worker.consumer")

# How long a finished turn's result waits for the broker connection to come back.
RESULT_PUBLISH_PATIENCE = 30.0

_ROUTING = {
    TurnStatus.complete: TURN_COMPLETED,
    TurnStatus.error: TURN_FAILED,
    TurnStatus.cancelled: TURN_CANCELLED,
}


class Worker:
    """Owns the broker, Redis and provider clients of one worker process."""

    def __init__(self, settings: WorkerSettings, providers: list[str]) -> None:
        self.settings = settings
        self.provider_names = providers
        self.topo = Topology(settings.parley_namespace)
        self._stack = AsyncExitStack()
        self._providers: dict[str, Provider] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self.connection: AbstractRobustConnection | None = None
        self.redis: aioredis.Redis | None = None
        self._exchanges: Exchanges | None = None
        self._channel: AbstractChannel | None = None
        self._runner: TurnRunner | None = None
        self._events: JobEvents | None = None
        self._registry: JobRegistry | None = None
        # Cancel signals of the turns this process is running, by job id.
        self._cancels: dict[str, asyncio.Event] = {}
        self._cancel_listener: asyncio.Task[None] | None = None
        # Set by `stop`: no new jobs; a turn cancelled from now on hands its job back.
        self.stopping = False

    async def start(self) -> None:
        s = self.settings
        timeouts = Timeouts(connect=s.provider_connect_timeout, idle=s.provider_idle_timeout)
        for name in self.provider_names:
            provider = build_provider(s, name, timeouts)
            self._providers[name] = provider
            self._stack.push_async_callback(provider.aclose)
        self.redis = s.redis_client()
        self._stack.push_async_callback(self.redis.aclose)
        events = JobEvents(self.redis, self.topo, s.replay_log_ttl)
        self._events = events
        self._registry = JobRegistry(self.redis, self.topo)
        web = WebTools.from_settings(s)
        self._stack.push_async_callback(web.aclose)
        self._runner = TurnRunner(
            events,
            s.max_generation_seconds,
            RetryPolicy(
                max_retries=s.provider_max_retries,
                base_seconds=s.provider_retry_base_seconds,
                max_wait_seconds=s.provider_retry_max_wait,
            ),
            web=web,
            flush_window=s.stream_flush_ms / 1000,
        )
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.topo.cancel_channel)
        self._cancel_listener = asyncio.create_task(self._listen_cancels(pubsub))
        self.connection = await aio_pika.connect_robust(s.rabbitmq_url.get_secret_value())
        self._stack.push_async_callback(self.connection.close)
        # Results are published on their own channel so that a slow publish
        # confirm never holds up deliveries.
        publish_channel = await open_channel(self.connection)
        self._exchanges = await declare_exchanges(publish_channel, self.topo)
        for name in self.provider_names:
            channel = await open_channel(self.connection, prefetch=s.concurrency_for(name))
            exchanges = await declare_exchanges(channel, self.topo)
            queue = await declare_job_queue(channel, self.topo, exchanges, name)
            tag = await queue.consume(self._make_handler(name))
            self._consumers.append((queue, tag))
            log.info("worker.consuming", queue=queue.name, concurrency=s.concurrency_for(name))

    @property
    def running(self) -> int:
        """Turns this process is running now."""
        return len(self._tasks)

    async def stop(self) -> None:
        """Stop taking jobs, let running turns finish within SHUTDOWN_GRACE_SECONDS, hand
        the unfinished ones back to the queue, close everything."""
        self.stopping = True
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consumers.clear()
        if self._tasks:
            grace = self.settings.shutdown_grace_seconds
            log.info("worker.draining", running=len(self._tasks), grace_s=grace)
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            if pending:
                log.warning("worker.grace_over", returning=len(pending))
                for task in pending:
                    task.cancel()
                # Each cancelled turn nacks its job before it ends (bounded: a nack on a
                # dead channel fails fast, and closing the channel requeues it anyway).
                await asyncio.wait(pending, timeout=5.0)
        if self._cancel_listener is not None:
            self._cancel_listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cancel_listener
        await self._stack.aclose()

    async def _listen_cancels(self, pubsub: aioredis.client.PubSub) -> None:
        """Set the cancel signal of a running turn when anyone asks to cancel it."""
        try:
            while True:
                try:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except (OSError, RedisError) as exc:
                    log.warning("cancel_listener.connection_lost", error_type=type(exc).__name__)
                    await asyncio.sleep(1.0)  # back off, then the next read reconnects
                    continue
                if msg is None or msg.get("type") != "message":
                    continue
                job_id = msg["data"].decode()
                event = self._cancels.get(job_id)
                if event is not None:
                    event.set()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    def _make_handler(
        self, provider_name: str
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def handler(message: AbstractIncomingMessage) -> None:
            # The turn runs in a task of its own: aio-pika cancels its consumer
            # callbacks when the channel closes (a broker restart), and a reply the
            # provider is still producing should still be finished and saved. Its
            # ack is then lost; the redelivered job sees the saved `done` in the
            # replay log and is acked without being generated again.
            task = asyncio.create_task(self._handle(provider_name, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # this callback was cancelled (its channel closed), not the turn
                # The turn was cancelled by `stop` and has handed its job back.

        return handler

    @staticmethod
    async def _settle(action: Awaitable[None]) -> None:
        """Ack/nack/reject; on a channel that closed meanwhile the broker redelivers."""
        try:
            await action
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            log.warning("job.settle_lost", error_type=type(exc).__name__)

    async def _handle(self, provider_name: str, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.clear_contextvars()
        # Every line about this job carries request, user, conversation, job and
        # provider, taken from the message's metadata (so even an invalid body's line).
        context = log_context(message) | {"provider": provider_name}
        structlog.contextvars.bind_contextvars(**context)
        try:
            job = ChatJob.model_validate_json(message.body)
        except ValidationError as exc:
            log.error("job.invalid", errors=exc.error_count())
            await self._settle(message.reject(requeue=False))
            return
        structlog.contextvars.bind_contextvars(
            request_id=job.request_id,
            user_id=job.user_id,
            conversation_id=job.conversation_id,
            job_id=job.job_id,
        )
        assert self._runner is not None
        provider = self._providers[provider_name]
        started = time.monotonic()
        log.info("job.started", redelivered=message.redelivered, messages=len(job.messages))
        if not message.redelivered and not job.fallback_from:
            waited = time.time() - job.created_at.timestamp()
            QUEUE_WAIT_SECONDS.labels(provider=provider_name).observe(max(0.0, waited))
        IN_FLIGHT.labels(provider=provider_name).inc()
        cancel = self._cancels.setdefault(job.job_id, asyncio.Event())
        try:
            result = await self._turn(job, provider, cancel, redelivered=bool(message.redelivered))
            if result is None:
                # Already saved and announced by an earlier attempt.
                await self._settle(message.ack())
                return
            await self._publish_result(result)
        except asyncio.CancelledError:
            if self.stopping:
                # The grace is over: another worker takes the job (see the module doc).
                RETURNED.labels(provider=provider_name).inc()
                log.warning("job.returned", reason="worker stopping")
                await self._settle(message.nack(requeue=True))
            raise
        except Exception:
            # The result could not be confirmed: leave the job to be redelivered.
            log.exception("job.result_unpublished")
            await self._settle(message.nack(requeue=True))
            return
        finally:
            IN_FLIGHT.labels(provider=provider_name).dec()
            self._cancels.pop(job.job_id, None)
        await self._settle(message.ack())
        if result.status is TurnStatus.error:
            ERRORS.labels(provider=result.provider, code=result.error_code or "error").inc()
        log.info(
            "job.finished",
            status=result.status.value,
            chunks=result.last_seq,
            reply_chars=len(result.reply),
            model=result.model,
            error_code=result.error_code,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _turn(
        self, job: ChatJob, provider: Provider, cancel: asyncio.Event, *, redelivered: bool
    ) -> TurnResult | None:
        """The turn's result, or None when an earlier attempt already finished it."""
        assert self._runner is not None and self._events is not None
        assert self._registry is not None
        if time.time() > job.deadline:
            return self._runner.expired(job, provider.name)
        # Cancelled while it waited in the queue? Asked while the turn starts rather
        # than before (time to first token does not wait for Redis): a yes sets the
        # same signal a live cancel does, and the turn ends `cancelled` at once.
        queued_cancel = asyncio.create_task(self._cancelled_while_queued(job.job_id, cancel))
        try:
            return await self._start(job, provider, cancel, redelivered=redelivered)
        finally:
            queued_cancel.cancel()

    async def _cancelled_while_queued(self, job_id: str, cancel: asyncio.Event) -> None:
        assert self._registry is not None
        try:
            if await self._registry.cancel_requested(job_id):
                log.info("job.cancelled_while_queued")
                cancel.set()
        except (RedisError, OSError) as exc:  # live cancels still arrive by pub/sub
            log.warning("job.cancel_check_failed", error_type=type(exc).__name__)

    async def _start(
        self, job: ChatJob, provider: Provider, cancel: asyncio.Event, *, redelivered: bool
    ) -> TurnResult | None:
        assert self._runner is not None and self._events is not None
        start_seq = job.start_seq
        if redelivered:
            # An earlier attempt died. What it streamed has reached clients and cannot
            # be taken back, so a second attempt must not add another reply to it.
            earlier = await self._events.replay(job.job_id)
            if any(e.terminal for e in earlier):
                log.info("job.already_finished")
                return None
            start_seq = max((e.seq for e in earlier), default=start_seq)
            streamed = [e for e in earlier if e.type in ("assistant", "reasoning")]
            if streamed and await self._finished_elsewhere(job.job_id):
                # The earlier attempt did finish: its ack was lost (a broker restart)
                # while its result was on the way to history, which has now saved it.
                log.info("job.already_finished", after_wait=True)
                return None
            if streamed:
                log.warning("job.redelivered_mid_reply", streamed_events=len(streamed))
                return self._runner.result(
                    job,
                    provider.name,
                    TurnStatus.error,
                    reply="".join(e.payload()["delta"] for e in streamed if e.type == "assistant"),
                    reasoning="".join(
                        e.payload()["delta"] for e in streamed if e.type == "reasoning"
                    ),
                    error="the reply was interrupted (its worker stopped); the partial "
                    "reply is saved",
                    code="worker_lost",
                    last_seq=start_seq,
                )
        outcome = await self._runner.run(job, provider, cancel, start_seq=start_seq)
        if await self._fall_back(job, provider.name, outcome):
            return None
        return outcome.result

    async def _finished_elsewhere(self, job_id: str) -> bool:
        """Wait up to REDELIVERY_GRACE_SECONDS for the job's `done`/`error` to appear."""
        assert self.redis is not None and self._events is not None
        grace = self.settings.redelivery_grace_seconds
        if grace <= 0:
            return False
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.topo.job_channel(job_id))
            # Subscribed first, then the log: a terminal event cannot slip between.
            if any(e.terminal for e in await self._events.replay(job_id)):
                return True
            deadline = time.monotonic() + grace
            while (left := deadline - time.monotonic()) > 0:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if msg is not None and any(e.terminal for e in decode_batch(msg["data"])):
                    return True
            return False
        except RedisError:
            return False
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    async def _fall_back(self, job: ChatJob, provider_name: str, outcome: Outcome) -> bool:
        """Hand a turn that failed before its first token to the next provider in
        FALLBACK_CHAIN; True when it was handed on (its result will come from there)."""
        failure = outcome.failure
        if failure is None or outcome.streamed:
            return False
        assert self.redis is not None and self._runner is not None
        if failure.code == "auth_failed":
            await self.redis.set(
                self.topo.provider_disabled(provider_name),
                b"1",
                ex=self.settings.provider_disable_seconds,
            )
            log.warning("provider.disabled", seconds=self.settings.provider_disable_seconds)
        elif not failure.retryable:
            return False
        tried = {*job.fallback_from, provider_name}
        chain = self.settings.fallback_providers()
        if provider_name in chain:
            chain = chain[chain.index(provider_name) + 1 :] + chain[: chain.index(provider_name)]
        # Another worker (with its own key) may serve the next provider: the chain is
        # the operator's statement of which providers may take over.
        for candidate in chain:
            if candidate in tried or candidate not in IMPLEMENTED:
                continue
            if await self.redis.exists(self.topo.provider_disabled(candidate)):
                continue
            seq = outcome.result.last_seq + 1
            await self._runner.announce(
                job, seq, f"{provider_name} is unavailable ({failure.code}); trying {candidate}"
            )
            handed = job.model_copy(
                update={
                    "provider": candidate,
                    "fallback_from": [*job.fallback_from, provider_name],
                    "start_seq": seq,
                }
            )
            await self._publish_job(handed)
            FALLBACKS.labels(provider=provider_name, to=candidate).inc()
            log.info("job.fallback", to=candidate)
            return True
        return False

    async def _publish_job(self, job: ChatJob) -> None:
        assert self._exchanges is not None
        await self._exchanges.jobs.publish(
            job_message(job),
            routing_key=job.provider,
            mandatory=True,
        )

    async def _publish_result(self, result: TurnResult) -> None:
        """Publish the result, confirmed. While the broker connection is being restored
        the job's channel can come back before the result channel; then wait for it
        (bounded) instead of handing the job back at once, since every hand-back counts
        towards the delivery limit and a few would dead-letter a healthy job."""
        assert self._exchanges is not None
        message = result_message(result)
        deadline = time.monotonic() + RESULT_PUBLISH_PATIENCE
        while True:
            try:
                await self._exchanges.events.publish(
                    message, routing_key=_ROUTING[result.status], mandatory=True
                )
                return
            except (aiormq.exceptions.ChannelInvalidStateError, ConnectionError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("job.result_publish_retry", error_type=type(exc).__name__)
                await asyncio.sleep(0.5)
