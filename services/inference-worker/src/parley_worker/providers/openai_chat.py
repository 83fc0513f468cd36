"""Groq and OpenRouter through the `openai` SDK's Chat Completions streaming API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI
from parley_common.providers import ProviderConfig
from parley_common.schemas import ContextMessage, Usage

from parley_worker.providers.base import (
    Chunk,
    Finish,
    ProviderError,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
    Timeouts,
)
from parley_worker.providers.openai_errors import map_openai_error, openai_timeout


def chat_messages(request: ProviderRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": request.system}]
    for m in request.messages:
        out.append(_message(m))
    return out


def _message(m: ContextMessage) -> dict[str, Any]:
    if m.image is None or m.role != "user":
        return {"role": m.role, "content": m.content}
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": m.content},
            {
                "type": "image_url",
                "image_url": {"url": f"data:{m.image.mime};base64,{m.image.data_base64}"},
            },
        ],
    }


class OpenAIChatProvider:
    def __init__(self, config: ProviderConfig, timeouts: Timeouts) -> None:
        assert config.api_key is not None
        self.name = config.name
        self.model = config.model
        # Retries are Parley's (worker-level, before the first token), not the SDK's.
        self._client = AsyncOpenAI(
            api_key=config.api_key.get_secret_value(),
            base_url=config.base_url,
            max_retries=0,
            timeout=openai_timeout(timeouts),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Chunk]:
        usage = Usage()
        model: str | None = None
        finished = False
        try:
            stream = await self._client.chat.completions.create(  # type: ignore[call-overload]  # messages are plain dicts, not the SDK's TypedDicts
                model=self.model,
                messages=chat_messages(request),
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                async for chunk in stream:
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = Usage(
                            input_tokens=chunk.usage.prompt_tokens,
                            output_tokens=chunk.usage.completion_tokens,
                        )
                    for choice in chunk.choices:
                        finished = finished or choice.finish_reason is not None
                        delta = choice.delta
                        extra = delta.model_extra or {}
                        reasoning = extra.get("reasoning") or extra.get("reasoning_content")
                        if isinstance(reasoning, str) and reasoning:
                            yield ReasoningDelta(reasoning)
                        if delta.content:
                            yield TextDelta(delta.content)
        except ProviderError:
            raise
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise map_openai_error(self.name, exc) from exc
        if not finished:
            raise ProviderError(
                f"{self.name} stream ended before the reply was finished",
                code="provider_stream_truncated",
                retryable=True,
            )
        yield Finish(model=model or self.model, usage=usage)
