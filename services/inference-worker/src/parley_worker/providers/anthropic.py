"""Claude through the `anthropic` SDK's Messages API, streaming.

Tools are `tools: [{name, description, input_schema}]` with `tool_choice`
`auto` or `none`; a call streams as a `tool_use` content block whose input comes
in `input_json_delta` pieces (`stop_reason: tool_use`). Its result goes back as
the assistant turn's content blocks, replayed as received (with extended
thinking, the signed `thinking` / `redacted_thinking` blocks must come back
unchanged), then a user turn of `tool_result` blocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anthropic
import httpx2
from anthropic import AsyncAnthropic, Omit, omit
from anthropic.types import (
    InputJSONDelta,
    MessageParam,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RedactedThinkingBlock,
    SignatureDelta,
    TextBlock,
    ThinkingBlock,
    ThinkingConfigParam,
    ToolChoiceParam,
    ToolParam,
    ToolUseBlock,
)
from anthropic.types import TextDelta as SDKTextDelta
from anthropic.types import ThinkingDelta as SDKThinkingDelta
from parley_common.providers import ProviderConfig
from parley_common.schemas import ContextMessage, Usage

from parley_worker.providers.base import (
    Chunk,
    Finish,
    ProviderError,
    ProviderRequest,
    ReasoningDelta,
    Replay,
    TextDelta,
    Timeouts,
    ToolCall,
    ToolStep,
    http_error,
    parse_arguments,
)

DEFAULT_MAX_TOKENS = 8192
# Anthropic's own error types, for failures that come inside a 200 stream.
_RETRYABLE_TYPES = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}


def anthropic_messages(request: ProviderRequest) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the Messages API `messages`.

    The API takes the system prompt apart and only `user`/`assistant` turns, so
    system messages in the context join the system prompt; empty turns are dropped
    (the API rejects empty content).
    """
    system = [request.system] if request.system else []
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "system":
            if m.content:
                system.append(m.content)
            continue
        if m.role == "user" and m.image is not None:
            out.append({"role": "user", "content": _image_content(m)})
        elif m.content:
            out.append({"role": m.role, "content": m.content})
    for step in request.steps:
        out.extend(_step_messages(step))
    return "\n\n".join(system), out


def _step_messages(step: ToolStep) -> list[dict[str, Any]]:
    content: list[dict[str, Any]]
    if isinstance(step.replay, list):
        content = step.replay
    else:
        content = [{"type": "text", "text": step.text}] if step.text else []
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": dict(c.arguments)}
            for c in step.calls
        ]
    results = [
        {
            "type": "tool_result",
            "tool_use_id": r.call_id,
            "content": r.content,
            "is_error": r.is_error,
        }
        for r in step.results
    ]
    return [{"role": "assistant", "content": content}, {"role": "user", "content": results}]


class _Blocks:
    """The assistant turn's content blocks as they stream, to replay with tool results."""

    def __init__(self) -> None:
        self.blocks: dict[int, dict[str, Any]] = {}
        self.json: dict[int, list[str]] = {}

    def start(self, index: int, block: object) -> None:
        if isinstance(block, TextBlock):
            self.blocks[index] = {"type": "text", "text": block.text}
        elif isinstance(block, ThinkingBlock):
            self.blocks[index] = {
                "type": "thinking",
                "thinking": block.thinking,
                "signature": block.signature,
            }
        elif isinstance(block, RedactedThinkingBlock):
            self.blocks[index] = {"type": "redacted_thinking", "data": block.data}
        elif isinstance(block, ToolUseBlock):
            self.blocks[index] = {"type": "tool_use", "id": block.id, "name": block.name}
            self.json[index] = []

    def delta(self, index: int, delta: object) -> None:
        block = self.blocks.get(index)
        if block is None:
            return
        if isinstance(delta, SDKTextDelta) and block["type"] == "text":
            block["text"] += delta.text
        elif isinstance(delta, SDKThinkingDelta) and block["type"] == "thinking":
            block["thinking"] += delta.thinking
        elif isinstance(delta, SignatureDelta) and block["type"] == "thinking":
            block["signature"] = delta.signature
        elif isinstance(delta, InputJSONDelta) and index in self.json:
            self.json[index].append(delta.partial_json)

    def stop(self, index: int) -> ToolCall | None:
        block = self.blocks.get(index)
        if block is None or block["type"] != "tool_use":
            return None
        block["input"] = parse_arguments("".join(self.json.get(index, [])))
        return ToolCall(id=block["id"], name=block["name"], arguments=block["input"])

    def replay(self) -> list[dict[str, Any]]:
        return [
            b for _, b in sorted(self.blocks.items()) if not (b["type"] == "text" and not b["text"])
        ]


def anthropic_tools(request: ProviderRequest) -> tuple[list[ToolParam], ToolChoiceParam]:
    tools: list[ToolParam] = [
        {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
        for t in request.tools
    ]
    choice: ToolChoiceParam = (
        {"type": "none"} if request.tool_choice == "none" else {"type": "auto"}
    )
    return tools, choice


def _image_content(m: ContextMessage) -> list[dict[str, Any]]:
    assert m.image is not None
    blocks: list[dict[str, Any]] = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": m.image.mime, "data": m.image.data_base64},
        }
    ]
    if m.content:
        blocks.append({"type": "text", "text": m.content})
    return blocks


class AnthropicProvider:
    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        thinking: ThinkingConfigParam | None = None,
    ) -> None:
        assert config.api_key is not None
        self.name = config.name
        self.model = config.model
        self._max_tokens = max_tokens
        # Off unless asked for: `{"type": "adaptive"}` on current models, or
        # `{"type": "enabled", "budget_tokens": N}` (N >= 1024, below max_tokens).
        self._thinking: ThinkingConfigParam | Omit = omit if thinking is None else thinking
        # Retries are Parley's (worker-level, before the first token), not the SDK's.
        # On the SDK's aiohttp transport (`anthropic[aiohttp]`), as the OpenAI adapters:
        # aiohttp's C parser reads the streamed body (ADR 9).
        timeout = anthropic.Timeout(timeouts.idle, connect=timeouts.connect)
        self._client = AsyncAnthropic(
            api_key=config.api_key.get_secret_value(),
            base_url=config.base_url,
            max_retries=0,
            timeout=timeout,
            http_client=anthropic.DefaultAioHttpClient(timeout=timeout),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Chunk]:
        system, messages = anthropic_messages(request)
        model: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        finished = False
        blocks = _Blocks()
        called = False
        tools, tool_choice = anthropic_tools(request)
        try:
            stream = await self._client.messages.create(
                model=self.model,
                max_tokens=self._max_tokens,
                system=system or omit,
                # Built as plain dicts; the API validates them (media types included).
                messages=cast("list[MessageParam]", messages),
                thinking=self._thinking,
                tools=tools or omit,
                tool_choice=tool_choice if tools else omit,
                stream=True,
            )
            async with stream:
                async for event in stream:
                    if isinstance(event, RawContentBlockDeltaEvent):
                        delta = event.delta
                        blocks.delta(event.index, delta)
                        if isinstance(delta, SDKTextDelta):
                            yield TextDelta(delta.text)
                        elif isinstance(delta, SDKThinkingDelta):
                            yield ReasoningDelta(delta.thinking)
                    elif isinstance(event, RawContentBlockStartEvent):
                        blocks.start(event.index, event.content_block)
                    elif isinstance(event, RawContentBlockStopEvent):
                        call = blocks.stop(event.index)
                        if call is not None:
                            called = True
                            yield call
                    elif isinstance(event, RawMessageStartEvent):
                        model = event.message.model or model
                        u = event.message.usage
                        input_tokens = _input_total(
                            u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens
                        )
                        output_tokens = u.output_tokens
                    elif isinstance(event, RawMessageDeltaEvent):
                        # Cumulative counts; the input may be restated here.
                        d = event.usage
                        output_tokens = d.output_tokens
                        if d.input_tokens is not None:
                            input_tokens = _input_total(
                                d.input_tokens,
                                d.cache_creation_input_tokens,
                                d.cache_read_input_tokens,
                            )
                    elif isinstance(event, RawMessageStopEvent):
                        finished = True
        except ProviderError:
            raise
        except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
            raise map_anthropic_error(self.name, exc) from exc
        if not finished:
            raise ProviderError(
                f"{self.name} stream ended before the reply was finished",
                code="provider_stream_truncated",
                retryable=True,
            )
        if called:
            yield Replay(blocks.replay())
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        yield Finish(model=model or self.model, usage=usage)


def _input_total(uncached: int, cache_write: int | None, cache_read: int | None) -> int:
    # Anthropic counts cached prompt tokens apart; Parley's input is the whole prompt.
    return uncached + (cache_write or 0) + (cache_read or 0)


def _retry_after(headers: object) -> float | None:
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value = get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def map_anthropic_error(provider: str, exc: Exception) -> ProviderError:
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        detail = (exc.api_message or exc.message)[:300]
        if status < 400:
            # An `error` event inside a stream that began with 200.
            etype = exc.type or "api_error"
            return ProviderError(
                f"{provider} stream failed: {etype}: {detail}",
                code="rate_limited" if etype == "rate_limit_error" else "provider_unavailable",
                retryable=etype in _RETRYABLE_TYPES,
            )
        return http_error(provider, status, detail, retry_after=_retry_after(exc.response.headers))
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return ProviderError(f"{provider} timed out", code="provider_timeout", retryable=True)
    # httpx2 errors come raw out of a stream that broke after it began.
    if isinstance(exc, anthropic.APIConnectionError | httpx2.HTTPError):
        return ProviderError(
            f"{provider} connection failed: {type(exc.__cause__ or exc).__name__}",
            code="provider_unreachable",
            retryable=True,
        )
    if isinstance(exc, anthropic.APIError):
        return ProviderError(
            f"{provider} stream failed: {exc.message}", code="provider_error", retryable=False
        )
    return ProviderError(
        f"{provider} stream failed: {type(exc).__name__}", code="provider_error", retryable=False
    )
