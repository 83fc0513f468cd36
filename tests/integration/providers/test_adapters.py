"""Each provider adapter against the simulator, through the provider's real SDK.

For every wire protocol: the streamed reply, reasoning, model and usage; what the
provider receives in its own format (system prompt, earlier turns, images); and how
its failures (429, 5xx, bad key, a connection cut mid-stream) become `ProviderError`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import pytest
from parley_common.providers import ProviderConfig
from parley_common.schemas import ContextMessage
from parley_common.schemas.jobs import ImageRef
from parley_worker.providers.anthropic import AnthropicProvider
from parley_worker.providers.base import (
    Chunk,
    Finish,
    Provider,
    ProviderError,
    ProviderRequest,
    ReasoningDelta,
    TextDelta,
    Timeouts,
)
from parley_worker.providers.google import GoogleProvider
from parley_worker.providers.ollama import OllamaProvider
from pydantic import SecretStr

from tests.integration.providers.conftest import PROTOCOLS, TIMEOUTS, Protocol, Sim

pytestmark = pytest.mark.integration

Build = Callable[..., Provider]

SYSTEM = "Answer briefly."
REASONING = "Let me think about this. The user wants an echo."
# A 1x1 PNG.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
    "mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_BYTES = len(base64.b64decode(PNG))


def ask(text: str, *, image: bool = False) -> ProviderRequest:
    return ProviderRequest(
        system=SYSTEM,
        messages=[
            ContextMessage(
                role="user",
                content=text,
                image=ImageRef(mime="image/png", data_base64=PNG) if image else None,
            )
        ],
    )


async def collect(provider: Provider, request: ProviderRequest) -> tuple[list[Chunk], Any]:
    """Everything the adapter yielded, and the `ProviderError` it ended with (or None)."""
    chunks: list[Chunk] = []
    try:
        async for chunk in provider.stream(request):
            chunks.append(chunk)
    except ProviderError as exc:
        return chunks, exc
    return chunks, None


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


def reasoning_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, ReasoningDelta))


def camel(value: Any) -> Any:
    """Gemini's JSON takes both spellings of a field (`mime_type`, `mimeType`); compare one."""
    if isinstance(value, dict):
        return {re.sub(r"_([a-z])", lambda m: m[1].upper(), k): camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


# --- the reply -----------------------------------------------------------------------


async def test_text_deltas_make_the_echo_and_finish_carries_model_and_usage(
    protocol: Protocol, build: Build
):
    chunks, error = await collect(build(protocol), ask("hello there"))
    assert error is None
    assert text_of(chunks) == "Echo: hello there"
    assert len([c for c in chunks if isinstance(c, TextDelta)]) > 1, "streamed, not in one piece"
    assert reasoning_of(chunks) == ""
    *_, finish = chunks
    assert isinstance(finish, Finish)
    assert [c for c in chunks if isinstance(c, Finish)] == [finish]
    assert finish.model == protocol.model
    assert finish.usage.input_tokens and finish.usage.input_tokens > 0
    assert finish.usage.output_tokens and finish.usage.output_tokens > 0


async def test_reasoning_streams_before_the_answer(protocol: Protocol, build: Build):
    chunks, error = await collect(build(protocol), ask("think first [[sim:reasoning]]"))
    assert error is None
    assert reasoning_of(chunks) == REASONING
    assert text_of(chunks) == "Echo: think first"
    kinds = [type(c) for c in chunks]
    assert kinds.index(TextDelta) > max(i for i, k in enumerate(kinds) if k is ReasoningDelta)
    assert isinstance(chunks[-1], Finish)


# --- what the provider receives, in its own format -----------------------------------


def native_history(protocol: str, body: dict[str, Any]) -> Any:
    match protocol:
        case "openai-chat" | "ollama":
            return body["messages"]
        case "openai-responses":
            return body["instructions"], body["input"]
        case "anthropic":
            return body["system"], body["messages"]
        case "gemini":
            return camel(body["systemInstruction"])["parts"], camel(body["contents"])
    raise AssertionError(protocol)


EXPECTED_HISTORY: dict[str, Any] = {
    "openai-chat": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "openai-responses": (
        SYSTEM,
        [
            {"role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "4"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "And 3+3?"}]},
        ],
    ),
    "anthropic": (
        SYSTEM,
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
    ),
    "gemini": (
        [{"text": SYSTEM}],
        [
            {"role": "user", "parts": [{"text": "What is 2+2?"}]},
            {"role": "model", "parts": [{"text": "4"}]},
            {"role": "user", "parts": [{"text": "And 3+3?"}]},
        ],
    ),
    "ollama": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
}


async def test_system_prompt_and_earlier_turns_reach_the_provider_natively(
    protocol: Protocol, build: Build, sim: Sim
):
    request = ProviderRequest(
        system=SYSTEM,
        messages=[
            ContextMessage(role="user", content="What is 2+2?"),
            ContextMessage(role="assistant", content="4"),
            ContextMessage(role="user", content="And 3+3?"),
        ],
    )
    chunks, error = await collect(build(protocol), request)
    assert error is None
    assert text_of(chunks) == "Echo: And 3+3?"
    [body] = sim.bodies(protocol.api)
    assert native_history(protocol.id, body) == EXPECTED_HISTORY[protocol.id]


def native_last_user(protocol: str, body: dict[str, Any]) -> Any:
    match protocol:
        case "openai-chat" | "anthropic":
            return body["messages"][-1]["content"]
        case "openai-responses":
            return body["input"][-1]["content"]
        case "gemini":
            parts = camel(body["contents"][-1]["parts"])
            for part in parts:
                if "inlineData" in part:
                    # Bytes in proto3 JSON are base64 in either alphabet; the SDK sends URL-safe.
                    data = part["inlineData"]["data"]
                    part["inlineData"]["data"] = base64.b64encode(base64.urlsafe_b64decode(data))
            return parts
        case "ollama":
            return {k: v for k, v in body["messages"][-1].items() if k != "role"}
    raise AssertionError(protocol)


EXPECTED_IMAGE: dict[str, Any] = {
    "openai-chat": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ],
    "openai-responses": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
    ],
    "anthropic": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"},
    ],
    "gemini": [
        {"inlineData": {"mimeType": "image/png", "data": PNG.encode()}},
        {"text": "What is this?"},
    ],
    "ollama": {"content": "What is this?", "images": [PNG]},
}


async def test_an_image_reaches_the_provider_natively(protocol: Protocol, build: Build, sim: Sim):
    chunks, error = await collect(build(protocol), ask("What is this?", image=True))
    assert error is None
    assert text_of(chunks) == f"Echo: What is this? [image: image/png, {PNG_BYTES} bytes]"
    [body] = sim.bodies(protocol.api)
    assert native_last_user(protocol.id, body) == EXPECTED_IMAGE[protocol.id]


# --- failures ------------------------------------------------------------------------


async def test_rate_limit_is_retryable_with_retry_after(protocol: Protocol, build: Build):
    text = f"busy {protocol.id} [[sim:status=429]] [[sim:retry-after=7]]"
    chunks, error = await collect(build(protocol), ask(text))
    assert chunks == []
    assert isinstance(error, ProviderError)
    assert (error.code, error.retryable, error.status, error.retry_after) == (
        "rate_limited",
        True,
        429,
        7.0,
    )


async def test_server_error_is_retryable(protocol: Protocol, build: Build):
    chunks, error = await collect(build(protocol), ask(f"down {protocol.id} [[sim:status=500]]"))
    assert chunks == []
    assert isinstance(error, ProviderError)
    assert (error.code, error.retryable, error.status) == ("provider_unavailable", True, 500)


async def test_rejected_api_key_is_auth_failed_and_not_retryable(protocol: Protocol, build: Build):
    chunks, error = await collect(build(protocol, key="invalid-key"), ask("hello"))
    assert chunks == []
    assert isinstance(error, ProviderError)
    assert (error.code, error.retryable) == ("auth_failed", False)
    # Google answers a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
    assert error.status == (400 if protocol.id == "gemini" else 401)


async def test_connection_cut_mid_stream_ends_in_provider_error(protocol: Protocol, build: Build):
    text = "one two three four five [[sim:drop-after=2]]"
    chunks, error = await collect(build(protocol), ask(text))
    assert chunks == [TextDelta("Echo: "), TextDelta("one ")]
    assert isinstance(error, ProviderError)
    assert error.retryable


async def test_silent_stream_times_out_as_retryable(protocol: Protocol, build: Build):
    provider = build(protocol, timeouts=Timeouts(connect=5.0, idle=0.3))
    chunks, error = await collect(provider, ask("wait [[sim:hang]]"))
    assert chunks == []
    assert isinstance(error, ProviderError)
    assert (error.code, error.retryable) == ("provider_timeout", True)


IN_STREAM_ERRORS = {
    "openai-responses": "server_error",
    "anthropic": "overloaded_error",
    "gemini": "UNAVAILABLE",
    "ollama": "model runner has unexpectedly stopped",
}


@pytest.mark.parametrize(
    "protocol", [p for p in PROTOCOLS if p.id in IN_STREAM_ERRORS], ids=lambda p: p.id
)
async def test_error_inside_a_started_stream_ends_in_provider_error(
    protocol: Protocol, build: Build
):
    text = f"a b c [[sim:stream-error={IN_STREAM_ERRORS[protocol.id]}]]"
    chunks, error = await collect(build(protocol), ask(text))
    assert chunks == [TextDelta("Echo: ")]
    assert isinstance(error, ProviderError)
    assert error.retryable


# --- adapter options -----------------------------------------------------------------


def _config(sim: Sim, protocol: Protocol) -> ProviderConfig:
    key = None if protocol.keyless else SecretStr("sim-key")
    return ProviderConfig(protocol.id, key, sim.url + protocol.path, protocol.model)


def _protocol(id: str) -> Protocol:
    return next(p for p in PROTOCOLS if p.id == id)


@pytest.mark.parametrize(
    "thinking", [{"type": "adaptive"}, {"type": "enabled", "budget_tokens": 2048}], ids=str
)
async def test_claude_thinking_is_requested_and_streamed(sim: Sim, thinking: Any):
    protocol = _protocol("anthropic")
    provider = AnthropicProvider(_config(sim, protocol), TIMEOUTS, thinking=thinking)
    try:
        chunks, error = await collect(provider, ask("plain question"))
    finally:
        await provider.aclose()
    assert error is None
    assert (reasoning_of(chunks), text_of(chunks)) == (REASONING, "Echo: plain question")
    [body] = sim.bodies(protocol.api)
    assert body["thinking"] == thinking


async def test_gemini_without_thought_summaries_shows_no_reasoning(sim: Sim):
    protocol = _protocol("gemini")
    provider = GoogleProvider(_config(sim, protocol), TIMEOUTS, include_thoughts=False)
    try:
        chunks, error = await collect(provider, ask("think first [[sim:reasoning]]"))
    finally:
        await provider.aclose()
    assert error is None
    assert (reasoning_of(chunks), text_of(chunks)) == ("", "Echo: think first")
    [body] = sim.bodies(protocol.api)
    assert "thinkingConfig" not in camel(body.get("generationConfig") or {})


async def test_ollama_think_is_sent_and_thinking_streamed(sim: Sim):
    protocol = _protocol("ollama")
    provider = OllamaProvider(_config(sim, protocol), TIMEOUTS, think=True)
    try:
        chunks, error = await collect(provider, ask("plain question"))
    finally:
        await provider.aclose()
    assert error is None
    assert (reasoning_of(chunks), text_of(chunks)) == (REASONING, "Echo: plain question")
    [body] = sim.bodies(protocol.api)
    assert body["think"] is True
