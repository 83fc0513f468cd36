"""Consumes turn results from `chat.events`, saves them, then announces `done`/`error`.

The announcement comes after the save, so `done` means saved. The AMQP message
is acked only after both; a failure in either requeues it, and the save is
idempotent by job id, so a redelivery stores nothing twice.

On shutdown the consumers are cancelled first (app.py); `drain` then waits for the
results already being saved, so none is cut between its save and its announcement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import structlog
from aio_pika.abc import AbstractIncomingMessage
from parley_common.amqp import log_context
from parley_common.events import JobEvents
from parley_common.jobs import JobRegistry
from parley_common.redact import scrub
from parley_common.schemas import ChatJob, DoneEvent, ErrorEvent, TurnResult, TurnStatus
from parley_common.schemas.events import encode_envelope
from parley_common.schemas.jobs import JOB_TYPE
from pydantic import ValidationError

from parley_history.metrics import RESULTS_EARLY, RESULTS_IN_FLIGHT, TURNS_SAVED
from parley_history.store import Store

log = structlog.get_logger("parley_history.consumer")

# A new conversation's first job is queued while history stores the conversation, so a
# reply that fails at once can arrive before it (ADR 10). Such a result is put back,
# with the growing backoff below, for up to this many deliveries (0.2 + 0.4 + ... + 5 s,
# about 16 s: longer than the gateway waits for history) before its conversation is
# taken to be gone.
EARLY_RESULT_DELIVERIES = 7


class _ConversationNotStoredYet(Exception):
    """The result's conversation is not stored, and its turn may still be."""


def _delivery_count(message: AbstractIncomingMessage) -> int:
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


class TurnConsumer:
    def __init__(self, store: Store, events: JobEvents, registry: JobRegistry) -> None:
        self._store = store
        self._events = events
        self._registry = registry
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        self._in_flight += 1
        self._idle.clear()
        RESULTS_IN_FLIGHT.inc()
        try:
            yield
        finally:
            RESULTS_IN_FLIGHT.dec()
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds for the messages being handled; how many were left
        (they are redelivered once the connection closes)."""
        if self._in_flight:
            log.info("history.draining", in_flight=self._in_flight, grace_s=grace)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()
        return self._in_flight

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**log_context(message))
        with self._tracked():
            try:
                result = TurnResult.model_validate_json(message.body)
            except ValidationError as exc:
                log.error("turn.invalid", errors=exc.error_count())
                await message.reject(requeue=False)  # to the dead-letter queue
                return
            structlog.contextvars.bind_contextvars(
                request_id=result.request_id,
                user_id=result.user_id,
                conversation_id=result.conversation_id,
                provider=result.provider,
                job_id=result.job_id,
            )
            delivery = _delivery_count(message)
            try:
                await self.handle(result, wait_for_conversation=delivery < EARLY_RESULT_DELIVERIES)
            except _ConversationNotStoredYet:
                RESULTS_EARLY.inc()
                log.info("turn.conversation_not_stored_yet", delivery=delivery)
                await self._backoff(message)
                await message.nack(requeue=True)
                return
            except Exception:
                log.exception("turn.save_failed", redelivered=message.redelivered)
                await self._backoff(message)
                await message.nack(requeue=True)
                return
            await message.ack()

    @staticmethod
    async def _backoff(message: AbstractIncomingMessage) -> None:
        """Hold a message that failed before requeueing it, longer each delivery, so an
        outage (MongoDB, Redis) is waited out instead of spun through."""
        await asyncio.sleep(min(0.2 * 2 ** _delivery_count(message), 5.0))

    async def on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        """A job that no worker could finish: save an error reply and tell its client."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**log_context(message))
        with self._tracked():
            await self._dead_letter(message)

    async def _dead_letter(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        job_id = message.message_id or ""
        if message.type != JOB_TYPE or not job_id:
            log.warning("dead_letter.ignored", type=message.type)
            await message.ack()  # stays visible in the dead-letter queue's own metrics
            return
        try:
            job = ChatJob.model_validate_json(message.body)
            user_id, conversation_id, provider = job.user_id, job.conversation_id, job.provider
            request_id = job.request_id
        except ValidationError:
            user_id = str(headers.get("user_id", ""))
            conversation_id = message.correlation_id or ""
            provider = str(headers.get("provider", ""))
            request_id = str(headers.get("request_id", ""))
        try:
            earlier = await self._events.replay(job_id)
            if any(e.terminal for e in earlier):
                await message.ack()  # already answered
                return
            result = TurnResult(
                job_id=job_id,
                request_id=request_id,
                user_id=user_id,
                conversation_id=conversation_id,
                provider=provider,
                status=TurnStatus.error,
                reply="".join(e.payload()["delta"] for e in earlier if e.type == "assistant"),
                error="the reply could not be generated: the job failed repeatedly and was "
                "set aside",
                error_code="job_dead_lettered",
                last_seq=max((e.seq for e in earlier), default=0),
                finished_at=datetime.now(UTC),
            )
            log.error("job.dead_lettered", reason=str(headers.get("x-first-death-reason", "")))
            if user_id and conversation_id:
                await self.handle(result)
            else:
                await self._events.publish(
                    job_id,
                    encode_envelope(
                        result.last_seq + 1,
                        ErrorEvent(
                            error=result.error or "",
                            conversation_id=conversation_id,
                            provider=provider,
                            code=result.error_code,
                        ),
                    ),
                )
        except Exception:
            log.exception("dead_letter.failed")
            await self._backoff(message)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def handle(self, result: TurnResult, *, wait_for_conversation: bool = False) -> None:
        """Save the result and announce it; with `wait_for_conversation`, a result whose
        conversation may still be being stored raises `_ConversationNotStoredYet`
        instead of being announced as having nowhere to go."""
        if result.error:
            # A provider may echo a key or a token in its error text: it is stored and
            # sent to the client, so it is scrubbed here, where it leaves the back end.
            result = result.model_copy(update={"error": scrub(result.error)})
        saved = await self._store.save_result(result)
        if (
            saved is None
            and wait_for_conversation
            and await self._registry.may_still_begin(result.job_id, result.conversation_id)
        ):
            raise _ConversationNotStoredYet
        seq = result.last_seq + 1
        message_id: str | None = None
        if saved is not None:
            message_id, result = saved  # announce what is stored, should they differ
        TURNS_SAVED.labels(status=result.status.value).inc()
        event: DoneEvent | ErrorEvent
        if message_id is None:
            log.warning("turn.conversation_gone", conversation_id=result.conversation_id)
            event = ErrorEvent(
                error="conversation was deleted while the reply was generated",
                conversation_id=result.conversation_id,
                provider=result.provider,
                code="conversation_deleted",
            )
        elif result.status is TurnStatus.complete:
            event = DoneEvent(
                reply=result.reply,
                conversation_id=result.conversation_id,
                provider=result.provider,
                message_id=message_id,
                model=result.model,
                usage=result.usage,
                sources=result.sources,
            )
        else:
            event = ErrorEvent(
                error=result.error or f"turn {result.status.value}",
                conversation_id=result.conversation_id,
                provider=result.provider,
                code=result.error_code or result.status.value,
                message_id=message_id,
            )
        # The result's event, then the registry: in order, in one round trip.
        pipe = self._events.pipeline()
        self._events.publish_in(pipe, result.job_id, [encode_envelope(seq, event)])
        self._registry.finish_in(pipe, result.job_id, result.conversation_id)
        await pipe.execute()
        log.info(
            "turn.saved",
            status=result.status.value,
            message_id=message_id,
            reply_chars=len(result.reply),
            conversation_id=result.conversation_id,
        )
