"""Ollama through the `ollama` SDK's `AsyncClient.chat`, streaming (`/api/chat`).

Tools are `tools: [{type: function, function: {...}}]`; calls arrive whole in a
message's `tool_calls` (with no ids: the adapter numbers them); results go back
as the assistant message with its `tool_calls`, then one `role: tool` message
per call naming the tool (`tool_name`). Ollama has no `tool_choice`: when the
model must answer, the tools are left out.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
from parley_common.providers import ProviderConfig
from parley_common.schemas import Usage

from parley_worker.providers.base import (
    Chunk,
    Finish,
    ProviderError,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
    Timeouts,
    ToolCall,
    ToolStep,
    http_error,
)


def ollama_messages(request: ProviderRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for m in request.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "user" and m.image is not None:
            # The SDK base64-encodes raw bytes itself.
            message["images"] = [base64.b64decode(m.image.data_base64)]
        out.append(message)
    for step in request.steps:
        out.extend(_step_messages(step))
    return out


def _step_messages(step: ToolStep) -> list[dict[str, Any]]:
    assistant = {
        "role": "assistant",
        "content": step.text,
        "tool_calls": [
            {"function": {"name": c.name, "arguments": dict(c.arguments)}} for c in step.calls
        ],
    }
    results = [{"role": "tool", "content": r.content, "tool_name": r.name} for r in step.results]
    return [assistant, *results]


def ollama_tools(request: ProviderRequest) -> list[dict[str, Any]] | None:
    if not request.tools or request.tool_choice == "none":
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in request.tools
    ]


class OllamaProvider:
    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        *,
        think: bool | None = None,
    ) -> None:
        self.name = config.name
        self.model = config.model
        # None leaves thinking to the model's default (thinking models think and
        # stream it apart; others answer). True makes Ollama reject models that
        # cannot think (400 "... does not support thinking").
        self._think = think
        headers: dict[str, str] = {}
        if config.api_key is not None and config.api_key.get_secret_value():
            # ollama.com and authenticating proxies take a bearer key; a local server needs none.
            headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._client = ollama.AsyncClient(
            host=config.base_url,
            timeout=httpx.Timeout(timeouts.idle, connect=timeouts.connect),
            headers=headers,
        )

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]  # unannotated in the SDK

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Chunk]:
        finish: Finish | None = None
        calls = 0
        try:
            stream = await self._client.chat(
                model=self.model,
                messages=ollama_messages(request),
                tools=ollama_tools(request),
                stream=True,
                think=self._think,
            )
            try:
                async for part in stream:
                    message = part.message
                    if message.thinking:
                        yield ReasoningDelta(message.thinking)
                    if message.content:
                        yield TextDelta(message.content)
                    for tool_call in message.tool_calls or []:
                        calls += 1
                        yield ToolCall(
                            id=f"call_{calls}",
                            name=tool_call.function.name,
                            arguments=dict(tool_call.function.arguments or {}),
                        )
                    if part.done:
                        usage = Usage(
                            input_tokens=part.prompt_eval_count, output_tokens=part.eval_count
                        )
                        finish = Finish(model=part.model or self.model, usage=usage)
            finally:
                # Release the connection even when the consumer stops early.
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
        except ProviderError:
            raise
        # ValueError: a line that is not JSON or not a chat response (pydantic's
        # ValidationError is one); ConnectionError: the SDK's "could not connect".
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError) as exc:
            raise map_ollama_error(self.name, exc) from exc
        if finish is None:
            raise ProviderError(
                f"{self.name} stream ended before the reply was finished",
                code="provider_stream_truncated",
                retryable=True,
            )
        yield finish


def _retry_after(exc: ollama.ResponseError) -> float | None:
    # The SDK raises ResponseError `from None`; the HTTP error it replaced, with the
    # response headers, is still its context.
    context = exc.__context__
    if not isinstance(context, httpx.HTTPStatusError):
        return None
    value = context.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def map_ollama_error(provider: str, exc: Exception) -> ProviderError:
    if isinstance(exc, ollama.ResponseError):
        status = exc.status_code
        detail = str(exc.error)[:300]
        if status < 0:
            # An {"error": ...} line inside a stream that began with 200.
            return ProviderError(
                f"{provider} stream failed: {detail}",
                code="provider_unavailable",
                retryable=True,
            )
        return http_error(provider, status, detail, retry_after=_retry_after(exc))
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(f"{provider} timed out", code="provider_timeout", retryable=True)
    if isinstance(exc, httpx.HTTPError | ConnectionError):
        return ProviderError(
            f"{provider} connection failed: {type(exc).__name__}",
            code="provider_unreachable",
            retryable=True,
        )
    return ProviderError(
        f"{provider} stream failed: {type(exc).__name__}", code="provider_error", retryable=False
    )
