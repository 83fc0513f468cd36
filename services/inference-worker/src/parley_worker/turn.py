"""Runs one chat job against one provider and publishes its events.

Every path returns a `TurnResult` (complete or error) carrying the reply so far;
nothing here raises past `run`, so the consumer can always publish the result.
"""

from __future__ import annotations

import asyncio
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


class TurnRunner:
    def __init__(self, events: JobEvents, max_generation_seconds: float) -> None:
        self._events = events
        self._max_seconds = max_generation_seconds

    async def run(self, job: ChatJob, provider: Provider) -> TurnResult:
        started = asyncio.get_running_loop().time()
        seq = 0  # seq 0 is the gateway's `meta`
        reply: list[str] = []
        reasoning: list[str] = []
        model: str | None = provider.model
        usage: Usage | None = None
        status = TurnStatus.complete
        error: str | None = None
        code: str | None = None
        request = ProviderRequest(system=system_prompt(job.mood), messages=job.messages)
        try:
            async with asyncio.timeout(self._max_seconds):
                async for chunk in provider.stream(request):
                    if isinstance(chunk, TextDelta):
                        if not chunk.text:
                            continue
                        seq += 1
                        reply.append(chunk.text)
                        await self._events.publish(
                            job.job_id, encode_delta(seq, "assistant", chunk.text)
                        )
                    elif isinstance(chunk, ReasoningDelta):
                        if not chunk.text:
                            continue
                        seq += 1
                        reasoning.append(chunk.text)
                        await self._events.publish(
                            job.job_id, encode_delta(seq, "reasoning", chunk.text)
                        )
                    elif isinstance(chunk, Finish):
                        model = chunk.model or model
                        usage = chunk.usage
        except ProviderError as exc:
            status, error, code = TurnStatus.error, exc.message, exc.code
            log.warning("provider.failed", code=exc.code, status=exc.status, after_chunks=seq)
        except TimeoutError:
            status, code = TurnStatus.error, "generation_timeout"
            error = f"{provider.name} did not finish within {self._max_seconds:.0f}s"
            log.warning("provider.timeout", after_chunks=seq)
        except Exception as exc:  # the turn must end with a result, whatever broke
            status, code = TurnStatus.error, "internal"
            error = "internal error while generating the reply"
            log.exception("turn.crashed", error_type=type(exc).__name__)
        elapsed = asyncio.get_running_loop().time() - started
        TURNS.labels(provider=provider.name, status=status.value).inc()
        TURN_SECONDS.labels(provider=provider.name).observe(elapsed)
        if usage is not None and usage.output_tokens:
            TOKENS.labels(provider=provider.name, kind="output").inc(usage.output_tokens)
        if usage is not None and usage.input_tokens:
            TOKENS.labels(provider=provider.name, kind="input").inc(usage.input_tokens)
        return TurnResult(
            job_id=job.job_id,
            request_id=job.request_id,
            user_id=job.user_id,
            conversation_id=job.conversation_id,
            provider=provider.name,
            model=model,
            status=status,
            reply="".join(reply),
            reasoning="".join(reasoning),
            usage=usage,
            error=error,
            error_code=code,
            last_seq=seq,
            finished_at=datetime.now(UTC),
        )

    async def expired(self, job: ChatJob, provider_name: str) -> TurnResult:
        return TurnResult(
            job_id=job.job_id,
            request_id=job.request_id,
            user_id=job.user_id,
            conversation_id=job.conversation_id,
            provider=provider_name,
            status=TurnStatus.error,
            error="the job waited too long in the queue and was not started",
            error_code="job_expired",
            last_seq=0,
            finished_at=datetime.now(UTC),
        )
