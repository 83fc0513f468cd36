"""Runs one chat job against one provider and publishes its events.

Every path returns a `TurnResult` (complete or error) carrying the reply so far;
nothing here raises past `run`, so the consumer can always publish the result.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from parley_common.events import JobEvents
from parley_common.schemas import ChatJob, TurnResult, TurnStatus, Usage
from parley_common.schemas.events import encode_delta

from parley_worker.metrics import TOKENS, TURN_SECONDS, TURNS
from parley_worker.prompts import system_prompt
from parley_worker.providers.base import (
    Finish,
    Provider,
    ProviderError,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
)

log = structlog.get_logger("parley_worker.turn")


@dataclass(slots=True)
class _Progress:
    seq: int
    model: str | None
    reply: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    usage: Usage | None = None


class TurnRunner:
    def __init__(self, events: JobEvents, max_generation_seconds: float) -> None:
        self._events = events
        self._max_seconds = max_generation_seconds

    async def run(
        self,
        job: ChatJob,
        provider: Provider,
        cancel: asyncio.Event | None = None,
        start_seq: int = 0,
    ) -> TurnResult:
        """Stream the reply; stop early (status `cancelled`) when `cancel` is set."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        state = _Progress(seq=start_seq, model=provider.model)
        status = TurnStatus.complete
        error: str | None = None
        code: str | None = None
        request = ProviderRequest(system=system_prompt(job.mood), messages=job.messages)
        cancel = cancel or asyncio.Event()
        stream_task = asyncio.create_task(self._consume(job, provider, request, state))
        cancel_task = asyncio.create_task(cancel.wait())
        try:
            async with asyncio.timeout(self._max_seconds):
                await asyncio.wait({stream_task, cancel_task}, return_when=asyncio.FIRST_COMPLETED)
                if not stream_task.done():
                    stream_task.cancel()  # closes the provider stream, and its connection
                    status, code = TurnStatus.cancelled, "cancelled"
                    error = "the reply was cancelled"
                    log.info("turn.cancelled", after_chunks=state.seq - start_seq)
                try:
                    await stream_task
                except asyncio.CancelledError:
                    if status is not TurnStatus.cancelled:
                        raise
        except ProviderError as exc:
            status, error, code = TurnStatus.error, exc.message, exc.code
            log.warning("provider.failed", code=exc.code, status=exc.status, after_chunks=state.seq)
        except TimeoutError:
            stream_task.cancel()
            status, code = TurnStatus.error, "generation_timeout"
            error = f"{provider.name} did not finish within {self._max_seconds:.0f}s"
            log.warning("provider.timeout", after_chunks=state.seq)
        except Exception as exc:  # the turn must end with a result, whatever broke
            status, code = TurnStatus.error, "internal"
            error = "internal error while generating the reply"
            log.exception("turn.crashed", error_type=type(exc).__name__)
        finally:
            cancel_task.cancel()
            if not stream_task.done():
                stream_task.cancel()
        elapsed = loop.time() - started
        usage = state.usage
        TURNS.labels(provider=provider.name, status=status.value).inc()
        TURN_SECONDS.labels(provider=provider.name).observe(elapsed)
        if usage is not None and usage.output_tokens:
            TOKENS.labels(provider=provider.name, kind="output").inc(usage.output_tokens)
        if usage is not None and usage.input_tokens:
            TOKENS.labels(provider=provider.name, kind="input").inc(usage.input_tokens)
        return self.result(
            job,
            provider.name,
            status,
            reply="".join(state.reply),
            reasoning="".join(state.reasoning),
            model=state.model,
            usage=usage,
            error=error,
            code=code,
            last_seq=state.seq,
        )

    async def _consume(
        self, job: ChatJob, provider: Provider, request: ProviderRequest, state: _Progress
    ) -> None:
        async for chunk in provider.stream(request):
            if isinstance(chunk, TextDelta):
                if chunk.text:
                    state.seq += 1
                    state.reply.append(chunk.text)
                    await self._events.publish(
                        job.job_id, encode_delta(state.seq, "assistant", chunk.text)
                    )
            elif isinstance(chunk, ReasoningDelta):
                if chunk.text:
                    state.seq += 1
                    state.reasoning.append(chunk.text)
                    await self._events.publish(
                        job.job_id, encode_delta(state.seq, "reasoning", chunk.text)
                    )
            elif isinstance(chunk, Finish):
                state.model = chunk.model or state.model
                state.usage = chunk.usage

    def result(
        self,
        job: ChatJob,
        provider_name: str,
        status: TurnStatus,
        *,
        reply: str = "",
        reasoning: str = "",
        model: str | None = None,
        usage: Usage | None = None,
        error: str | None = None,
        code: str | None = None,
        last_seq: int = 0,
    ) -> TurnResult:
        return TurnResult(
            job_id=job.job_id,
            request_id=job.request_id,
            user_id=job.user_id,
            conversation_id=job.conversation_id,
            provider=provider_name,
            model=model,
            status=status,
            reply=reply,
            reasoning=reasoning,
            usage=usage,
            error=error,
            error_code=code,
            last_seq=last_seq,
            finished_at=datetime.now(UTC),
        )

    def expired(self, job: ChatJob, provider_name: str) -> TurnResult:
        return self.result(
            job,
            provider_name,
            TurnStatus.error,
            error="the job waited too long in the queue and was not started",
            code="job_expired",
        )
