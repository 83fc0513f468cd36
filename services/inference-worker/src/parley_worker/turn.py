"""Runs one chat job against one provider and publishes its events.

Every path returns an `Outcome` whose `TurnResult` (complete, error or cancelled)
carries the reply so far; nothing here raises past `run`, so the consumer can
always publish a result. A retryable failure (429, 5xx, network) before the first
token is retried with backoff that honours `Retry-After`, announced to the client
by a `status` event; after the first token nothing is retried, because what was
streamed cannot be taken back.

A `web: true` turn offers the web tools (`tools/web.py`) and runs the tool loop:
when the model asks for tools, each call is announced by a `status` event, the
tools run (concurrently, cancellable), and the model is called again with their
results; after `WEB_MAX_TOOL_STEPS` steps the tools stay declared but the model
must answer. Retries apply to each model call on its own: a call that failed
before its first token is retried even when an earlier step of the turn
streamed text. The reply is the text of every step; the pages the tools read
and found become the result's `sources`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from parley_common.events import EventBatch, JobEvents
from parley_common.redact import scrub
from parley_common.schemas import ChatJob, Source, StatusEvent, TurnResult, TurnStatus, Usage
from parley_common.schemas.events import encode_delta, encode_envelope

from parley_worker.metrics import RETRIES, TOKENS, TURN_SECONDS, TURNS
from parley_worker.prompts import system_prompt
from parley_worker.providers.base import (
    Finish,
    Provider,
    ProviderError,
    ProviderRequest,
    ReasoningDelta,
    Replay,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolStep,
)
from parley_worker.tools.web import ToolOutcome, WebTools, merge_sources

log = structlog.get_logger("parley_worker.turn")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_seconds: float = 1.0
    max_wait_seconds: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wanted = retry_after if retry_after is not None else self.base_seconds * 2**attempt
        return max(0.0, min(wanted, self.max_wait_seconds))


# Tool calls run in one step, at most; further calls in the same step get an error.
MAX_CALLS_PER_STEP = 4
_Attempt = tuple[TurnStatus, str | None, str | None, ProviderError | None]


@dataclass(slots=True)
class _Progress:
    seq: int
    model: str | None
    # Where the turn's events go (in order, batched while Redis is busy).
    out: EventBatch
    # Whether any token of the turn reached the client.
    streamed: bool = False
    reply: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    usage: Usage | None = None
    sources: list[Source] = field(default_factory=list)
    # The current model call: whether it streamed a token, its text, its tool calls.
    call_streamed: bool = False
    call_text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    replay: object = None

    def new_call(self) -> None:
        self.call_streamed = False
        self.call_text = []
        self.calls = []
        self.replay = None

    def add_usage(self, usage: Usage) -> None:
        if self.usage is None:
            self.usage = usage
            return
        self.usage = Usage(
            input_tokens=_plus(self.usage.input_tokens, usage.input_tokens),
            output_tokens=_plus(self.usage.output_tokens, usage.output_tokens),
        )


def _plus(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else a + b


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
        web: WebTools | None = None,
        flush_window: float = 0.0,
    ) -> None:
        self._events = events
        # Deltas arriving within this many seconds of a publish go out together.
        self._flush_window = flush_window
        self._max_seconds = max_generation_seconds
        self._retry = retry or RetryPolicy()
        # The web tools a `web: true` job is offered (None: such jobs get none).
        self._web = web

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
        state = _Progress(
            seq=start_seq,
            model=provider.model,
            out=EventBatch(self._events, job.job_id, self._flush_window),
        )
        web = self._web if job.web else None
        if job.web and web is None:
            log.warning("turn.web_tools_unavailable")
        request = ProviderRequest(
            system=system_prompt(job.mood, web=web is not None),
            messages=job.messages,
            tools=web.specs if web is not None else (),
        )
        steps = 0
        while True:
            status, error, code, failure = await self._call(job, provider, request, state, cancel)
            if status is not TurnStatus.complete or not state.calls:
                break
            if web is None or request.tool_choice == "none":
                # Tools it was not offered, or after it was told to answer: stop here.
                log.warning("turn.tool_calls_refused", calls=len(state.calls), steps=steps)
                if not state.reply:
                    status, code = TurnStatus.error, "tool_steps_exhausted"
                    error = f"{provider.name} kept asking for tools instead of answering"
                break
            steps += 1
            step = await self._tool_step(job, state, web, cancel)
            if step is None:
                status, code, error = TurnStatus.cancelled, "cancelled", "the reply was cancelled"
                break
            request = request.then(step, final=steps >= web.max_steps)
        try:
            await state.out.flush()  # every event is out before the result is
        except Exception as exc:  # the log misses events; the saved reply does not
            log.error("turn.events_unpublished", error_type=type(exc).__name__)
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
            sources=list(state.sources) if web is not None else None,
        )
        return Outcome(result, failure if status is TurnStatus.error else None, state.streamed)

    async def _call(
        self,
        job: ChatJob,
        provider: Provider,
        request: ProviderRequest,
        state: _Progress,
        cancel: asyncio.Event,
    ) -> _Attempt:
        """One model call, retried while it fails retryably before its first token."""
        attempt = 0
        while True:
            status, error, code, failure = await self._attempt(
                job, provider, request, state, cancel
            )
            if (
                failure is None
                or not failure.retryable
                or state.call_streamed
                or attempt >= self._retry.max_retries
            ):
                return status, error, code, failure
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
                return TurnStatus.cancelled, "the reply was cancelled", "cancelled", None

    async def _tool_step(
        self, job: ChatJob, state: _Progress, web: WebTools, cancel: asyncio.Event
    ) -> ToolStep | None:
        """Announce and run the calls of one step; None when the turn was cancelled."""
        calls = list(state.calls)
        run, skipped = calls[:MAX_CALLS_PER_STEP], calls[MAX_CALLS_PER_STEP:]
        for call in run:
            await self.status(job, state, web.describe(call))
        task: asyncio.Future[list[ToolOutcome]] = asyncio.gather(*(web.run(c) for c in run))
        cancel_task = asyncio.create_task(cancel.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {task, cancel_task}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                log.info("turn.cancelled", during="tools")
                return None
            outcomes = task.result()
        finally:
            cancel_task.cancel()
        results: list[ToolResult] = []
        for outcome in outcomes:
            results.append(outcome.result)
            merge_sources(state.sources, outcome.sources)
        for call in skipped:
            results.append(
                ToolResult(
                    call_id=call.id,
                    name=call.name,
                    content=f"not run: at most {MAX_CALLS_PER_STEP} tool calls per step",
                    is_error=True,
                )
            )
        log.info(
            "turn.tool_step",
            calls=[c.name for c in calls],
            errors=sum(r.is_error for r in results),
        )
        return ToolStep(
            text="".join(state.call_text),
            calls=tuple(calls),
            results=tuple(results),
            replay=state.replay,
        )

    async def status(self, job: ChatJob, state: _Progress, message: str) -> None:
        state.seq += 1
        await state.out.publish(encode_envelope(state.seq, StatusEvent(message=message)))

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
    ) -> _Attempt:
        state.new_call()
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
            # A provider may echo the key in its error text: scrubbed before it leaves.
            return TurnStatus.error, scrub(exc.message), exc.code, exc
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
                    if not state.call_text and state.reply and not state.reply[-1][-1:].isspace():
                        # A later step's text starts a new paragraph of the reply.
                        await self._delta(job, state, "\n\n")
                    state.call_text.append(chunk.text)
                    await self._delta(job, state, chunk.text)
            elif isinstance(chunk, ReasoningDelta):
                if chunk.text:
                    state.seq += 1
                    state.streamed = state.call_streamed = True
                    state.reasoning.append(chunk.text)
                    await state.out.publish(encode_delta(state.seq, "reasoning", chunk.text))
            elif isinstance(chunk, ToolCall):
                state.calls.append(chunk)
            elif isinstance(chunk, Replay):
                state.replay = chunk.data
            elif isinstance(chunk, Finish):
                state.model = chunk.model or state.model
                state.add_usage(chunk.usage)

    async def _delta(self, job: ChatJob, state: _Progress, text: str) -> None:
        state.seq += 1
        state.streamed = state.call_streamed = True
        state.reply.append(text)
        await state.out.publish(encode_delta(state.seq, "assistant", text))

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
        sources: list[Source] | None = None,
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
            sources=sources,
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
