"""Simulator features Parley's adapters do not use yet, as each real SDK parses them.

Tool calls (`[[sim:tool=NAME]]`: Anthropic `tool_use` + `input_json_delta`, Gemini
`functionCall` parts, Ollama `tool_calls`) and the non-streaming forms of the native
protocols, kept faithful to what the SDKs expect.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from anthropic import AsyncAnthropic
from google import genai
from google.genai import types
from ollama import AsyncClient

from tests.integration.providers.conftest import Sim

pytestmark = pytest.mark.integration

ASK = "weather in Paris [[sim:tool=get_weather]]"


async def test_anthropic_tool_use_streams_as_input_json(sim: Sim):
    client = AsyncAnthropic(api_key="sim-key", base_url=sim.url, max_retries=0)
    tool: Any = {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    try:
        async with client.messages.stream(
            model="claude-sim-1",
            max_tokens=1024,
            messages=[{"role": "user", "content": ASK}],
            tools=[tool],
        ) as stream:
            message = await stream.get_final_message()
    finally:
        await client.close()
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"city": "weather in Paris"})
    assert block.id.startswith("toolu_")


async def test_gemini_function_call_arrives_as_a_part(sim: Sim):
    # An httpx2 client, as the adapter uses: the SDK's default aiohttp session
    # subclasses aiohttp.ClientSession, which aiohttp warns about.
    http = httpx2.AsyncClient()
    client = genai.Client(
        api_key="sim-key",
        http_options=types.HttpOptions(
            base_url=sim.url,
            httpx_async_client=http,
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    declaration = types.FunctionDeclaration(
        name="get_weather",
        description="Current weather in a city",
        parameters=types.Schema(
            type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}
        ),
    )
    calls: list[types.FunctionCall] = []
    finish: list[Any] = []
    try:
        stream = await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash",
            contents=ASK,
            config=types.GenerateContentConfig(
                tools=[types.Tool(function_declarations=[declaration])]
            ),
        )
        async for chunk in stream:
            calls.extend(chunk.function_calls or [])
            finish.extend(c.finish_reason for c in chunk.candidates or [] if c.finish_reason)
    finally:
        await client.aio.aclose()
        await http.aclose()
    [call] = calls
    assert (call.name, call.args) == ("get_weather", {"city": "weather in Paris"})
    assert finish == [types.FinishReason.STOP]


async def test_ollama_tool_calls_arrive_in_the_message(sim: Sim):
    client = AsyncClient(host=sim.url)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    calls: list[Any] = []
    done_reasons: list[str | None] = []
    try:
        stream = await client.chat(
            model="llama3.2",
            messages=[{"role": "user", "content": ASK}],
            tools=[tool],
            stream=True,
        )
        async for part in stream:
            calls.extend(part.message.tool_calls or [])
            if part.done:
                done_reasons.append(part.done_reason)
    finally:
        await client.close()
    [call] = calls
    assert (call.function.name, dict(call.function.arguments)) == (
        "get_weather",
        {"city": "weather in Paris"},
    )
    assert done_reasons == ["stop"]


async def test_anthropic_non_streaming_message(sim: Sim):
    client = AsyncAnthropic(api_key="sim-key", base_url=sim.url, max_retries=0)
    try:
        message = await client.messages.create(
            model="claude-sim-1",
            max_tokens=1024,
            system="Be brief.",
            messages=[{"role": "user", "content": "hello [[sim:reasoning]]"}],
        )
    finally:
        await client.close()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].type == "text"
    assert message.content[1].text == "Echo: hello"
    assert (message.stop_reason, message.model) == ("end_turn", "claude-sim-1")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


async def test_gemini_non_streaming_generate_content(sim: Sim):
    http = httpx2.AsyncClient()
    client = genai.Client(
        api_key="sim-key",
        http_options=types.HttpOptions(
            base_url=sim.url,
            httpx_async_client=http,
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    try:
        response = await client.aio.models.generate_content(
            model="gemini-2.5-flash",
            contents="hello",
            config=types.GenerateContentConfig(system_instruction="Be brief."),
        )
    finally:
        await client.aio.aclose()
        await http.aclose()
    assert response.text == "Echo: hello"
    assert response.model_version == "gemini-2.5-flash"
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count == 2


async def test_ollama_non_streaming_chat(sim: Sim):
    client = AsyncClient(host=sim.url)
    try:
        response = await client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "hello"}], stream=False
        )
    finally:
        await client.close()
    assert (response.message.content, response.done, response.done_reason) == (
        "Echo: hello",
        True,
        "stop",
    )
    assert response.eval_count == 2
