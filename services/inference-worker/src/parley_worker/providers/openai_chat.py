"""Groq and OpenRouter through the `openai` SDK's Chat Completions streaming API.

Tools are `tools: [{type: function, function: {...}}]`; a call streams as
`delta.tool_calls[]` fragments (id and name first, then pieces of the JSON
arguments, keyed by `index`) and ends with `finish_reason: tool_calls`; its
result goes back as the assistant message's `tool_calls` then a `role: tool`
message per call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
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
    ToolCall,
    ToolSpec,
    ToolStep,
    parse_arguments,
)
from parley_worker.providers.openai_errors import map_openai_error, openai_client
from parley_worker.providers.openai_sse import post_sse


def chat_messages(request: ProviderRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": request.system}]
    for m in request.messages:
        out.append(_message(m))
    for step in request.steps:
        out.extend(_step_messages(step))
    return out


def chat_tools(tools: tuple[ToolSpec, ...]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in tools
    ]


def _step_messages(step: ToolStep) -> list[dict[str, Any]]:
    assistant: dict[str, Any] = {
        "role": "assistant",
        "content": step.text or None,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(dict(c.arguments))},
            }
            for c in step.calls
        ],
    }
    results = [
        {"role": "tool", "tool_call_id": r.call_id, "content": r.content} for r in step.results
    ]
    return [assistant, *results]


@dataclass(slots=True)
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


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
        self._client = openai_client(config, timeouts)

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Chunk]:
        usage = Usage()
        model: str | None = None
        finished = False
        calls: dict[int, _PendingCall] = {}
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = chat_tools(request.tools)
            body["tool_choice"] = request.tool_choice
        try:
            # The SDK's own `post` (its client, auth, headers, timeouts and status
            # errors), with the body as JSON bytes and the streamed HTTP response
            # back: `chat.completions.create` would walk every message of the context
            # against its TypedDicts, encode the body with the standard library's
            # json and wrap the response, about 0.4 ms of the worker's CPU before the
            # request leaves, on the way to the first token (docs/benchmarks.md).
            async with post_sse(self._client, "/chat/completions", body) as chunks:
                async for chunk in chunks:
                    model = chunk.get("model") or model
                    used = chunk.get("usage")
                    if used:
                        usage = Usage(
                            input_tokens=used.get("prompt_tokens"),
                            output_tokens=used.get("completion_tokens"),
                        )
                    for choice in chunk.get("choices") or ():
                        finished = finished or choice.get("finish_reason") is not None
                        delta = choice.get("delta") or {}
                        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                        if isinstance(reasoning, str) and reasoning:
                            yield ReasoningDelta(reasoning)
                        content = delta.get("content")
                        if content:
                            yield TextDelta(content)
                        for fragment in delta.get("tool_calls") or ():
                            pending = calls.setdefault(
                                int(fragment.get("index", 0)), _PendingCall()
                            )
                            pending.id = fragment.get("id") or pending.id
                            fn = fragment.get("function")
                            if fn:
                                pending.name = fn.get("name") or pending.name
                                if fn.get("arguments"):
                                    pending.arguments.append(fn["arguments"])
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
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(
                id=call.id or f"call_{index}",
                name=call.name,
                arguments=parse_arguments("".join(call.arguments)),
            )
        yield Finish(model=model or self.model, usage=usage)
