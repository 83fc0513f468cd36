"""Gemini through the `google-genai` SDK's `generate_content_stream`.

Tools are `tools: [{functionDeclarations: [...]}]` with `toolConfig.functionCallingConfig.mode`
`AUTO` or `NONE` (the SDK's automatic function calling is off: Parley runs the
tools). A call arrives as a `functionCall` part, often with a `thoughtSignature`;
the model's parts go back as they came (signatures included, which Gemini
requires), then a user turn of `functionResponse` parts.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from google import genai
from google.genai import errors, types
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
)

# Finish reasons after which the reply is complete.
_NORMAL_FINISH = {"STOP", "MAX_TOKENS", "FINISH_REASON_UNSPECIFIED"}
_STATUS_CODES = {
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
    "DEADLINE_EXCEEDED": 504,
}


def gemini_contents(request: ProviderRequest) -> tuple[str, list[types.Content]]:
    """The system instruction and the `contents` (roles `user` and `model`).

    System messages in the context join the system instruction; empty turns are
    dropped (the API rejects a content without parts).
    """
    system = [request.system] if request.system else []
    out: list[types.Content] = []
    for m in request.messages:
        if m.role == "system":
            if m.content:
                system.append(m.content)
            continue
        parts = _parts(m)
        if parts:
            out.append(
                types.Content(role="model" if m.role == "assistant" else "user", parts=parts)
            )
    for step in request.steps:
        out.extend(_step_contents(step))
    return "\n\n".join(system), out


def _step_contents(step: ToolStep) -> list[types.Content]:
    parts: list[types.Part]
    if isinstance(step.replay, list):
        parts = list(step.replay)
    else:
        parts = [types.Part.from_text(text=step.text)] if step.text else []
        parts += [
            types.Part(
                function_call=types.FunctionCall(
                    id=c.id if c.extra.get("native_id") else None,
                    name=c.name,
                    args=dict(c.arguments),
                )
            )
            for c in step.calls
        ]
    native_ids = {c.id for c in step.calls if c.extra.get("native_id")}
    responses = [
        types.Part(
            function_response=types.FunctionResponse(
                id=r.call_id if r.call_id in native_ids else None,
                name=r.name,
                response={"error": r.content} if r.is_error else {"output": r.content},
            )
        )
        for r in step.results
    ]
    return [types.Content(role="model", parts=parts), types.Content(role="user", parts=responses)]


def _tool_config(request: ProviderRequest) -> dict[str, Any]:
    if not request.tools:
        return {}
    declarations = [
        types.FunctionDeclaration(
            name=t.name, description=t.description, parameters_json_schema=dict(t.parameters)
        )
        for t in request.tools
    ]
    mode = (
        types.FunctionCallingConfigMode.NONE
        if request.tool_choice == "none"
        else types.FunctionCallingConfigMode.AUTO
    )
    return {
        "tools": [types.Tool(function_declarations=declarations)],
        "tool_config": types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(mode=mode)
        ),
        "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True),
    }


class _ModelTurn:
    """The model's parts as they stream, to replay with the function responses."""

    def __init__(self) -> None:
        self.parts: list[types.Part] = []
        self.calls = 0

    def add(self, part: types.Part) -> ToolCall | None:
        call = part.function_call
        if call is not None:
            self.calls += 1
            self.parts.append(part)
            return ToolCall(
                id=call.id or f"call_{self.calls}",
                name=call.name or "",
                arguments=call.args or {},
                extra={"native_id": bool(call.id)},
            )
        if part.thought and not part.thought_signature:
            return None  # a thought summary: not needed back
        last = self.parts[-1] if self.parts else None
        if (
            part.text
            and not part.thought
            and not part.thought_signature
            and last is not None
            and last.text
            and not last.thought
            and not last.thought_signature
        ):
            self.parts[-1] = types.Part.from_text(text=last.text + part.text)
        else:
            self.parts.append(part)
        return None


def _parts(m: ContextMessage) -> list[types.Part]:
    parts: list[types.Part] = []
    if m.role == "user" and m.image is not None:
        data = base64.b64decode(m.image.data_base64)
        parts.append(types.Part.from_bytes(data=data, mime_type=m.image.mime))
    if m.content:
        parts.append(types.Part.from_text(text=m.content))
    return parts


class GoogleProvider:
    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        *,
        include_thoughts: bool = True,
    ) -> None:
        assert config.api_key is not None
        self.name = config.name
        self.model = config.model
        # Thought summaries as reasoning; turn off for models without thinking.
        self._include_thoughts = include_thoughts
        # Our own httpx2 client: without one the SDK uses aiohttp when it is installed,
        # where its one timeout bounds the whole request (a generation), not the
        # silence between chunks.
        self._http = httpx2.AsyncClient(transport=_IdleTimeoutTransport(timeouts))
        self._client = genai.Client(
            api_key=config.api_key.get_secret_value(),
            http_options=types.HttpOptions(
                base_url=config.base_url,
                httpx_async_client=self._http,
                # Retries are Parley's (worker-level, before the first token), not the SDK's.
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()  # the SDK leaves a client it was given open
        self._client.close()  # the unused sync client the SDK made alongside

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Chunk]:
        system, contents = gemini_contents(request)
        config = types.GenerateContentConfig(
            system_instruction=system or None,
            thinking_config=(
                types.ThinkingConfig(include_thoughts=True) if self._include_thoughts else None
            ),
            **_tool_config(request),
        )
        turn = _ModelTurn()
        model: str | None = None
        usage = Usage()
        finish_reason: str | None = None
        wrote = False
        try:
            stream = await self._client.aio.models.generate_content_stream(
                model=self.model,
                contents=contents,
                config=config,
            )
            try:
                async for chunk in stream:
                    model = chunk.model_version or model
                    if chunk.usage_metadata is not None:
                        usage = _usage(chunk.usage_metadata)
                    feedback = chunk.prompt_feedback
                    if feedback is not None and feedback.block_reason is not None:
                        raise ProviderError(
                            f"{self.name} blocked the prompt: {feedback.block_reason.value}",
                            code="provider_rejected",
                            retryable=False,
                        )
                    # One candidate was asked for.
                    candidate = chunk.candidates[0] if chunk.candidates else None
                    if candidate is None:
                        continue
                    if candidate.finish_reason is not None:
                        finish_reason = candidate.finish_reason.value
                    content = candidate.content
                    for part in (content.parts if content is not None else None) or []:
                        call = turn.add(part)
                        if call is not None:
                            yield call
                        if not part.text:
                            continue
                        if part.thought:
                            yield ReasoningDelta(part.text)
                        else:
                            wrote = True
                            yield TextDelta(part.text)
            finally:
                # Release the connection even when the consumer stops early.
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
        except ProviderError:
            raise
        except (errors.APIError, errors.UnknownApiResponseError, httpx2.HTTPError) as exc:
            raise map_google_error(self.name, exc) from exc
        if finish_reason is None:
            raise ProviderError(
                f"{self.name} stream ended before the reply was finished",
                code="provider_stream_truncated",
                retryable=True,
            )
        if finish_reason not in _NORMAL_FINISH and not wrote:
            raise ProviderError(
                f"{self.name} stopped without a reply: {finish_reason}",
                code="provider_rejected",
                retryable=False,
            )
        if turn.calls:
            yield Replay(turn.parts)
        yield Finish(model=model or self.model, usage=usage)


class _IdleTimeoutTransport(httpx2.AsyncHTTPTransport):
    """Applies Parley's connect and idle timeouts to every request.

    The SDK passes its single `HttpOptions.timeout` (or none) with each request,
    which would override a client-level timeout.
    """

    def __init__(self, timeouts: Timeouts) -> None:
        super().__init__()
        self._timeout = httpx2.Timeout(timeouts.idle, connect=timeouts.connect).as_dict()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.extensions = {**request.extensions, "timeout": self._timeout}
        return await super().handle_async_request(request)


def _usage(meta: types.GenerateContentResponseUsageMetadata) -> Usage:
    # Thinking tokens are billed as output but counted apart from the candidates.
    output = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    has_output = meta.candidates_token_count is not None or meta.thoughts_token_count is not None
    return Usage(input_tokens=meta.prompt_token_count, output_tokens=output if has_output else None)


def _error_details(exc: errors.APIError) -> list[dict[str, Any]]:
    body = exc.details
    if isinstance(body, dict):
        inner = body.get("error", body)
        details = inner.get("details") if isinstance(inner, dict) else None
        if isinstance(details, list):
            return [d for d in details if isinstance(d, dict)]
    return []


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _retry_after(exc: errors.APIError) -> float | None:
    headers = getattr(exc.response, "headers", None)
    get = getattr(headers, "get", None)
    value = get("retry-after") if get is not None else None
    if value is not None:
        try:
            return float(value)
        except ValueError:
            pass
    # Google says when to retry in a `google.rpc.RetryInfo` detail ("35s").
    for detail in _error_details(exc):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            m = _DURATION.match(str(detail.get("retryDelay", "")))
            if m is not None:
                return float(m.group(1))
    return None


def map_google_error(provider: str, exc: Exception) -> ProviderError:
    if isinstance(exc, errors.APIError):
        status = exc.code if isinstance(exc.code, int) else _STATUS_CODES.get(exc.status or "", 500)
        detail = str(exc.message or exc.status or "")[:300]
        reasons = {str(d.get("reason")) for d in _error_details(exc)}
        # An invalid key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID.
        return http_error(
            provider,
            status,
            detail,
            retry_after=_retry_after(exc),
            key_refused="API_KEY_INVALID" in reasons,
        )
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(f"{provider} timed out", code="provider_timeout", retryable=True)
    # httpx2 errors come raw out of a stream that broke after it began.
    if isinstance(exc, httpx2.HTTPError):
        return ProviderError(
            f"{provider} connection failed: {type(exc).__name__}",
            code="provider_unreachable",
            retryable=True,
        )
    return ProviderError(
        f"{provider} stream failed: {type(exc).__name__}", code="provider_error", retryable=False
    )
