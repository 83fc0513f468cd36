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
from typing import Any

import anthropic
import httpx2
from anthropic import AsyncAnthropic
from anthropic.types import ThinkingConfigParam, ToolChoiceParam, ToolParam
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
from parley_worker.providers.openai_sse import post_sse

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

    def start(self, index: int, block: dict[str, Any]) -> None:
        kind = block.get("type")
        if kind == "text":
            self.blocks[index] = {"type": "text", "text": block.get("text") or ""}
        elif kind == "thinking":
            self.blocks[index] = {
                "type": "thinking",
                "thinking": block.get("thinking") or "",
                "signature": block.get("signature") or "",
            }
        elif kind == "redacted_thinking":
            self.blocks[index] = {"type": "redacted_thinking", "data": block.get("data")}
        elif kind == "tool_use":
            self.blocks[index] = {
                "type": "tool_use",
                "id": block.get("id"),
                "name": block.get("name"),
            }
            self.json[index] = []

    def delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self.blocks.get(index)
        if block is None:
            return
        kind = delta.get("type")
        if kind == "text_delta" and block["type"] == "text":
            block["text"] += delta.get("text") or ""
        elif kind == "thinking_delta" and block["type"] == "thinking":
            block["thinking"] += delta.get("thinking") or ""
        elif kind == "signature_delta" and block["type"] == "thinking":
            block["signature"] = delta.get("signature") or ""
        elif kind == "input_json_delta" and index in self.json:
            self.json[index].append(delta.get("partial_json") or "")

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
        self._thinking = thinking
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
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self._max_tokens,
            # Built as plain dicts; the API validates them (media types included).
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        if self._thinking is not None:
            body["thinking"] = self._thinking
        if tools:
            body["tools"] = tools
            body["tool_choice"] = tool_choice
        try:
            # The SDK's own `post` (its key, version header, timeouts, status errors)
            # with the body as JSON bytes; each event decoded once with orjson, as the
            # OpenAI adapters do. The SDK's typed stream built a model per event, a
            # third of this adapter's CPU per token (ADR 9).
            async with post_sse(self._client, "/v1/messages", body, openai_errors=False) as events:
                async for event in events:
                    kind = event.get("type")
                    if kind == "content_block_delta":
                        delta = event.get("delta") or {}
                        blocks.delta(event.get("index", 0), delta)
                        if delta.get("type") == "text_delta":
                            yield TextDelta(delta.get("text") or "")
                        elif delta.get("type") == "thinking_delta":
                            yield ReasoningDelta(delta.get("thinking") or "")
                    elif kind == "content_block_start":
                        blocks.start(event.get("index", 0), event.get("content_block") or {})
                    elif kind == "content_block_stop":
                        call = blocks.stop(event.get("index", 0))
                        if call is not None:
                            called = True
                            yield call
                    elif kind == "message_start":
                        message = event.get("message") or {}
                        model = message.get("model") or model
                        u = message.get("usage") or {}
                        input_tokens = _input_total(u)
                        output_tokens = u.get("output_tokens")
                    elif kind == "message_delta":
                        # Cumulative counts; the input may be restated here.
                        d = event.get("usage") or {}
                        output_tokens = d.get("output_tokens", output_tokens)
                        if d.get("input_tokens") is not None:
                            input_tokens = _input_total(d)
                    elif kind == "message_stop":
                        finished = True
                    elif kind == "error":
                        raise _stream_error(self.name, event.get("error") or {})
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


def _input_total(usage: dict[str, Any]) -> int:
    # Anthropic counts cached prompt tokens apart; Parley's input is the whole prompt.
    return int(
        (usage.get("input_tokens") or 0)
        + (usage.get("cache_creation_input_tokens") or 0)
        + (usage.get("cache_read_input_tokens") or 0)
    )


def _stream_error(provider: str, error: dict[str, Any]) -> ProviderError:
    """An `error` event inside a stream that began with 200."""
    etype = str(error.get("type") or "api_error")
    detail = str(error.get("message") or "")[:300]
    return ProviderError(
        f"{provider} stream failed: {etype}: {detail}",
        code="rate_limited" if etype == "rate_limit_error" else "provider_unavailable",
        retryable=etype in _RETRYABLE_TYPES,
    )


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
