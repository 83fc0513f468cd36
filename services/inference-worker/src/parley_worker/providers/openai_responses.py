"""OpenAI through the `openai` SDK's Responses API, streaming.

Tools are `tools: [{type: function, name, parameters}]`; a call arrives as a
`function_call` output item (complete in `response.output_item.done`); its result
goes back as that `function_call` item then a `function_call_output` item with
the same `call_id`. Requests are not stored (`store: false`), so each call sends
the whole conversation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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

# Failures inside a started stream that another attempt may not meet (the worker retries
# only before the first token); anything else (an invalid prompt, a bad image) is final.
_RETRYABLE_CODES = {"server_error", "rate_limit_exceeded"}


def response_input(messages: list[ContextMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "assistant":
            out.append(
                {"role": "assistant", "content": [{"type": "output_text", "text": m.content}]}
            )
            continue
        parts: list[dict[str, Any]] = [{"type": "input_text", "text": m.content}]
        if m.image is not None:
            parts.append(
                {
                    "type": "input_image",
                    "image_url": f"data:{m.image.mime};base64,{m.image.data_base64}",
                }
            )
        out.append({"role": m.role, "content": parts})
    return out


def step_items(step: ToolStep) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if step.text:
        out.append({"role": "assistant", "content": [{"type": "output_text", "text": step.text}]})
    for c in step.calls:
        out.append(
            {
                "type": "function_call",
                "call_id": c.id,
                "name": c.name,
                "arguments": json.dumps(dict(c.arguments)),
            }
        )
    for r in step.results:
        out.append({"type": "function_call_output", "call_id": r.call_id, "output": r.content})
    return out


def response_tools(tools: tuple[ToolSpec, ...]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": dict(t.parameters),
            "strict": False,
        }
        for t in tools
    ]


class OpenAIResponsesProvider:
    def __init__(self, config: ProviderConfig, timeouts: Timeouts) -> None:
        assert config.api_key is not None
        self.name = config.name
        self.model = config.model
        self._client = openai_client(config, timeouts)

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Chunk]:
        finish: Finish | None = None
        items = response_input(request.messages)
        for step in request.steps:
            items.extend(step_items(step))
        body: dict[str, Any] = {
            "model": self.model,
            "instructions": request.system,
            "input": items,
            "stream": True,
            "store": False,
        }
        if request.tools:
            body["tools"] = response_tools(request.tools)
            body["tool_choice"] = request.tool_choice
        try:
            # As the Chat Completions adapter: the SDK's own `post` with the body as
            # JSON bytes, and each event decoded once with orjson. The SDK's typed
            # stream built a pydantic model per event, nearly all of this adapter's
            # CPU per token (ADR 9).
            async with post_sse(self._client, "/responses", body) as events:
                async for event in events:
                    kind = event.get("type")
                    if kind == "response.output_text.delta":
                        yield TextDelta(str(event.get("delta") or ""))
                    elif kind == "response.reasoning_summary_text.delta":
                        yield ReasoningDelta(str(event.get("delta") or ""))
                    elif kind == "response.output_item.done":
                        item = event.get("item") or {}
                        if item.get("type") == "function_call":
                            yield ToolCall(
                                id=str(item.get("call_id") or ""),
                                name=str(item.get("name") or ""),
                                arguments=parse_arguments(item.get("arguments") or ""),
                            )
                    elif kind in ("response.completed", "response.incomplete"):
                        finish = _finish(event.get("response") or {}, self.model)
                    elif kind == "response.failed":
                        err = (event.get("response") or {}).get("error") or {}
                        raise ProviderError(
                            f"{self.name} response failed: {err.get('message') or 'unknown error'}",
                            code="provider_error",
                            retryable=err.get("code") in _RETRYABLE_CODES,
                        )
                    elif kind == "error":
                        raise ProviderError(
                            f"{self.name} stream error: {event.get('message')}",
                            code="provider_error",
                            retryable=event.get("code") in _RETRYABLE_CODES,
                        )
        except ProviderError:
            raise
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise map_openai_error(self.name, exc) from exc
        if finish is None:
            raise ProviderError(
                f"{self.name} stream ended before the reply was finished",
                code="provider_stream_truncated",
                retryable=True,
            )
        yield finish


def _finish(response: dict[str, Any], default_model: str) -> Finish:
    used = response.get("usage") or {}
    usage = Usage(input_tokens=used.get("input_tokens"), output_tokens=used.get("output_tokens"))
    return Finish(model=response.get("model") or default_model, usage=usage)
