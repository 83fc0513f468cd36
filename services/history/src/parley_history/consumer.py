"""Consumes turn results from `chat.events`, saves them, then announces `done`/`error`.

The announcement comes after the save, so `done` means saved. The AMQP message
is acked only after both; a failure in either requeues it, and the save is
idempotent by job id, so a redelivery stores nothing twice.
"""

from __future__ import annotations

import structlog
from aio_pika.abc import AbstractIncomingMessage
from parley_common.events import JobEvents
from parley_common.schemas import DoneEvent, ErrorEvent, TurnResult, TurnStatus
from parley_common.schemas.events import encode_envelope
from pydantic import ValidationError

from parley_history.metrics import TURNS_SAVED
from parley_history.store import Store

log = structlog.get_logger("parley_history.consumer")


class TurnConsumer:
    def __init__(self, store: Store, events: JobEvents) -> None:
        self._store = store
        self._events = events

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.clear_contextvars()
        headers = message.headers or {}
        structlog.contextvars.bind_contextvars(
            request_id=str(headers.get("request_id", "")), job_id=message.message_id
        )
        try:
            result = TurnResult.model_validate_json(message.body)
        except ValidationError as exc:
            log.error("turn.invalid", errors=exc.error_count())
            await message.reject(requeue=False)  # to the dead-letter queue
            return
        try:
            await self.handle(result)
        except Exception:
            log.exception("turn.save_failed", redelivered=message.redelivered)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def handle(self, result: TurnResult) -> None:
        message_id = await self._store.save_result(result)
        TURNS_SAVED.labels(status=result.status.value).inc()
        seq = result.last_seq + 1
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
            )
        else:
            event = ErrorEvent(
                error=result.error or f"turn {result.status.value}",
                conversation_id=result.conversation_id,
                provider=result.provider,
                code=result.error_code or result.status.value,
                message_id=message_id,
            )
        await self._events.publish(result.job_id, encode_envelope(seq, event))
        log.info(
            "turn.saved",
            status=result.status.value,
            message_id=message_id,
            reply_chars=len(result.reply),
            conversation_id=result.conversation_id,
        )
