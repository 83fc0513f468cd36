"""Runs one chat job against one provider and publishes its events.

Every path returns an `Outcome` whose `TurnResult` (complete, error or cancelled)
carries the reply so far; nothing here raises past `run`, so the consumer can
always publish a result. A retryable failure (429, 5xx, network) before the first
token is retried with backoff that honours `Retry-After`, announced to the client
by a `status` event; after the first token nothing is retried, because what was
streamed cannot be taken back.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from parley_common.events import JobEvents
from parley_common.schemas import ChatJob, StatusEvent, TurnResult, TurnStatus, Usage
from parley_common.schemas.events import encode_delta, encode_envelope

from parley_worker.metrics import RETRIES, TOKENS, TURN_SECONDS, TURNS
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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_seconds: float = 1.0
    max_wait_seconds: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wanted = retry_after if retry_after is not None else self.base_seconds * 2**attempt
        return max(0.0, min(wanted, self.max_wait_seconds))


@dataclass(slots=True)
class _Progress:
    seq: int
    model: str | None
    streamed: bool = False
    reply: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    result: TurnResult
    # The provider error that ended the turn, if one did.
    failure: ProviderError | None = None
    # Whether any token reached the client.
    streamed: bool = False


class TurnRunner:
    def __init__(
        self,
        events: JobEvents,
        max_generation_seconds: float,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._events = events
        self._max_seconds = max_generation_seconds
        self._retry = retry or RetryPolicy()

    async def run(
        self,
        job: ChatJob,
        provider: Provider,
        cancel: asyncio.Event | None = None,
        start_seq: int = 0,
    ) -> Outcome:
        """Stream the reply; stop early (status `cancelled`) when `cancel` is set."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        cancel = cancel or asyncio.Event()
        state = _Progress(seq=start_seq, model=provider.model)
        request = ProviderRequest(system=system_prompt(job.mood), messages=job.messages)
        attempt = 0
        while True:
            status, error, code, failure = await self._attempt(
                job, provider, request, state, cancel
            )
            if (
                failure is None
                or not failure.retryable
                or state.streamed
                or attempt >= self._retry.max_retries
            ):
                break
            delay = self._retry.delay(attempt, failure.retry_after)
            attempt += 1
            RETRIES.labels(provider=provider.name).inc()
            log.info("provider.retrying", attempt=attempt, delay_s=delay, code=failure.code)
            await self.status(
                job,
                state,
                f"{provider.name} is busy ({failure.status or failure.code}); "
                f"retrying in {delay:.0f}s",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel.wait(), timeout=delay)
            if cancel.is_set():
                status, code, error = TurnStatus.cancelled, "cancelled", "the reply was cancelled"
                break
        elapsed = loop.time() - started
        usage = state.usage
        TURNS.labels(provider=provider.name, status=status.value).inc()
        TURN_SECONDS.labels(provider=provider.name).observe(elapsed)
        if usage is not None and usage.output_tokens:
            TOKENS.labels(provider=provider.name, kind="output").inc(usage.output_tokens)
        if usage is not None and usage.input_tokens:
            TOKENS.labels(provider=provider.name, kind="input").inc(usage.input_tokens)
        result = self.result(
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
        return Outcome(result, failure if status is TurnStatus.error else None, state.streamed)

    async def status(self, job: ChatJob, state: _Progress, message: str) -> None:
        state.seq += 1
        await self._events.publish(
            job.job_id, encode_envelope(state.seq, StatusEvent(message=message))
        )

    async def announce(self, job: ChatJob, seq: int, message: str) -> None:
        """A `status` event outside a run (e.g. a fallback to another provider)."""
        await self._events.publish(job.job_id, encode_envelope(seq, StatusEvent(message=message)))

    async def _attempt(
        self,
        job: ChatJob,
        provider: Provider,
        request: ProviderRequest,
        state: _Progress,
        cancel: asyncio.Event,
    ) -> tuple[TurnStatus, str | None, str | None, ProviderError | None]:
        stream_task = asyncio.create_task(self._consume(job, provider, request, state))
        cancel_task = asyncio.create_task(cancel.wait())
        try:
            async with asyncio.timeout(self._max_seconds):
                await asyncio.wait({stream_task, cancel_task}, return_when=asyncio.FIRST_COMPLETED)
                if not stream_task.done():
                    stream_task.cancel()  # closes the provider stream, and its connection
                    with contextlib.suppress(asyncio.CancelledError):
                        await stream_task
                    log.info("turn.cancelled", streamed=state.streamed)
                    return TurnStatus.cancelled, "the reply was cancelled", "cancelled", None
                await stream_task
            return TurnStatus.complete, None, None, None
        except ProviderError as exc:
            log.warning(
                "provider.failed", code=exc.code, status=exc.status, streamed=state.streamed
            )
            return TurnStatus.error, exc.message, exc.code, exc
        except TimeoutError:
            log.warning("provider.timeout", streamed=state.streamed)
            message = f"{provider.name} did not finish within {self._max_seconds:.0f}s"
            return TurnStatus.error, message, "generation_timeout", None
        except Exception as exc:  # the turn must end with a result, whatever broke
            log.exception("turn.crashed", error_type=type(exc).__name__)
            return TurnStatus.error, "internal error while generating the reply", "internal", None
        finally:
            cancel_task.cancel()
            if not stream_task.done():
                stream_task.cancel()

    async def _consume(
        self, job: ChatJob, provider: Provider, request: ProviderRequest, state: _Progress
    ) -> None:
        async for chunk in provider.stream(request):
            if isinstance(chunk, TextDelta):
                if chunk.text:
                    state.seq += 1
                    state.streamed = True
                    state.reply.append(chunk.text)
                    await self._events.publish(
                        job.job_id, encode_delta(state.seq, "assistant", chunk.text)
                    )
            elif isinstance(chunk, ReasoningDelta):
                if chunk.text:
                    state.seq += 1
                    state.streamed = True
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
            last_seq=job.start_seq,
        )
