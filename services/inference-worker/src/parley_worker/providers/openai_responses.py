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
from typing import Any, cast

import httpx2
import openai
from openai import AsyncStream, omit
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseOutputItemDoneEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)
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
        try:
            created = await self._client.responses.create(
                model=self.model,
                instructions=request.system,
                input=items,  # type: ignore[arg-type]  # plain dicts, not the SDK's TypedDicts
                tools=response_tools(request.tools) if request.tools else omit,  # type: ignore[arg-type]  # plain dicts, not the SDK's TypedDicts
                tool_choice=request.tool_choice if request.tools else omit,
                stream=True,
                store=False,
            )
            stream = cast("AsyncStream[ResponseStreamEvent]", created)
            async with stream:
                async for event in stream:
                    match event:
                        case ResponseTextDeltaEvent():
                            yield TextDelta(event.delta)
                        case ResponseReasoningSummaryTextDeltaEvent():
                            yield ReasoningDelta(event.delta)
                        case ResponseOutputItemDoneEvent(item=ResponseFunctionToolCall() as call):
                            yield ToolCall(
                                id=call.call_id,
                                name=call.name,
                                arguments=parse_arguments(call.arguments),
                            )
                        case ResponseCompletedEvent() | ResponseIncompleteEvent():
                            resp = event.response
                            usage = Usage()
                            if resp.usage is not None:
                                usage = Usage(
                                    input_tokens=resp.usage.input_tokens,
                                    output_tokens=resp.usage.output_tokens,
                                )
                            finish = Finish(model=resp.model or self.model, usage=usage)
                        case ResponseFailedEvent():
                            err = event.response.error
                            raise ProviderError(
                                f"{self.name} response failed: "
                                f"{err.message if err else 'unknown error'}",
                                code="provider_error",
                                retryable=False,
                            )
                        case ResponseErrorEvent():
                            raise ProviderError(
                                f"{self.name} stream error: {event.message}",
                                code="provider_error",
                                retryable=False,
                            )
                        case _:
                            pass
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
