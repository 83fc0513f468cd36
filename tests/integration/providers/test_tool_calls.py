"""Tool calls through each adapter, in each provider's native function-calling protocol.

The simulator calls `web_search`, then `web_fetch` with the first URL of the search
result it was sent back, then answers quoting the last result; it answers 400 when
a result does not come back in its protocol's native form (an unknown call id, a
missing thought signature, a Claude thinking block left out), as the real APIs do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from parley_common.schemas import ContextMessage
from parley_worker.providers.anthropic import AnthropicProvider
from parley_worker.providers.base import (
    Chunk,
    Finish,
    Provider,
    ProviderRequest,
    Replay,
    ToolCall,
    ToolResult,
    ToolStep,
)
from parley_worker.tools.web import WEB_FETCH, WEB_SEARCH

from tests.integration.providers.conftest import PROTOCOLS, TIMEOUTS, Protocol, Sim
from tests.integration.providers.test_adapters import _config, camel, collect, text_of

pytestmark = pytest.mark.integration

Build = Callable[..., Provider]
QUESTION = "who is polly"
SEARCH_RESULT = "1. Polly the parrot\n   URL: http://pages.test/polly\n   A parrot."
PAGE = "Page http://pages.test/polly\nPolly-7731 is a parrot who lives in Lisbon."


def ask(text: str, **tools: Any) -> ProviderRequest:
    return ProviderRequest(
        system="Answer briefly.",
        messages=[ContextMessage(role="user", content=text)],
        tools=(WEB_SEARCH, WEB_FETCH),
        **tools,
    )


def calls_of(chunks: list[Chunk]) -> list[ToolCall]:
    return [c for c in chunks if isinstance(c, ToolCall)]


def step(chunks: list[Chunk], content: str, *, is_error: bool = False) -> ToolStep:
    """What the turn runner sends back: the model's step and one result per call."""
    calls = tuple(calls_of(chunks))
    replay = next((c.data for c in chunks if isinstance(c, Replay)), None)
    results = tuple(ToolResult(c.id, c.name, content, is_error) for c in calls)
    return ToolStep(text=text_of(chunks), calls=calls, results=results, replay=replay)


async def run_search_then_fetch(provider: Provider, text: str) -> list[list[Chunk]]:
    """Three model calls: search, fetch, answer; every chunk list of each."""
    request = ask(f"{text} [[sim:tool=web_search,web_fetch]]")
    rounds: list[list[Chunk]] = []
    for content in (SEARCH_RESULT, PAGE, None):
        chunks, error = await collect(provider, request)
        assert error is None, error
        assert isinstance(chunks[-1], Finish)
        rounds.append(chunks)
        if content is not None:
            request = request.then(step(chunks, content))
    return rounds


async def test_search_then_fetch_then_answer_in_each_protocol(protocol: Protocol, build: Build):
    search, fetch, answer = await run_search_then_fetch(build(protocol), QUESTION)
    [call] = calls_of(search)
    assert (call.name, dict(call.arguments)) == ("web_search", {"query": QUESTION})
    assert call.id
    [call] = calls_of(fetch)
    assert (call.name, dict(call.arguments)) == ("web_fetch", {"url": "http://pages.test/polly"})
    assert calls_of(answer) == []
    assert text_of(answer).startswith(f"Echo: {QUESTION} [tool result: Page http://pages.test")
    assert "Polly-7731 is a parrot" in text_of(answer), "the page reached the model"


def _native_results(protocol: str, body: dict[str, Any]) -> list[str]:
    """The tool results the provider received, read in its own protocol's terms."""
    match protocol:
        case "openai-chat" | "ollama":
            return [m["content"] for m in body["messages"] if m["role"] == "tool"]
        case "openai-responses":
            return [i["output"] for i in body["input"] if i.get("type") == "function_call_output"]
        case "anthropic":
            return [
                b["content"]
                for m in body["messages"]
                if isinstance(m["content"], list)
                for b in m["content"]
                if b.get("type") == "tool_result"
            ]
        case "gemini":
            return [
                p["functionResponse"]["response"]["output"]
                for c in camel(body["contents"])
                for p in c["parts"]
                if "functionResponse" in p
            ]
    raise AssertionError(protocol)


def _native_tools(protocol: str, body: dict[str, Any]) -> list[str]:
    match protocol:
        case "openai-chat" | "ollama":
            return [t["function"]["name"] for t in body.get("tools") or []]
        case "openai-responses" | "anthropic":
            return [t["name"] for t in body.get("tools") or []]
        case "gemini":
            return [
                d["name"]
                for t in camel(body.get("tools") or [])
                for d in t.get("functionDeclarations", [])
            ]
    raise AssertionError(protocol)


async def test_tools_and_results_are_sent_natively(protocol: Protocol, build: Build, sim: Sim):
    await run_search_then_fetch(build(protocol), QUESTION)
    first, second, third = sim.bodies(protocol.api)
    assert _native_tools(protocol.id, first) == ["web_search", "web_fetch"]
    assert _native_results(protocol.id, first) == []
    assert _native_results(protocol.id, second) == [SEARCH_RESULT]
    assert _native_results(protocol.id, third) == [SEARCH_RESULT, PAGE]


async def test_no_tools_are_declared_when_none_are_offered(
    protocol: Protocol, build: Build, sim: Sim
):
    request = ProviderRequest(
        system="s", messages=[ContextMessage(role="user", content="hi [[sim:tool=web_search]]")]
    )
    chunks, error = await collect(build(protocol), request)
    assert error is None and calls_of(chunks) == []
    assert text_of(chunks) == "Echo: hi"
    [body] = sim.bodies(protocol.api)
    camel_body = camel(body)
    # The ollama SDK always sends `tools`, empty when there are none.
    assert not camel_body.get("tools")
    assert "toolChoice" not in camel_body and "toolConfig" not in camel_body


async def test_tool_choice_none_makes_the_model_answer(protocol: Protocol, build: Build, sim: Sim):
    """After the last allowed step the tools stay declared (the conversation holds
    calls to them) but the model may not call them: it answers."""
    provider = build(protocol)
    request = ask("again [[sim:tool=web_search,web_search]]")
    chunks, _ = await collect(provider, request)
    chunks, error = await collect(provider, request.then(step(chunks, SEARCH_RESULT), final=True))
    assert error is None and calls_of(chunks) == []
    assert text_of(chunks).startswith("Echo: again [tool result: 1. Polly the parrot")
    last = sim.bodies(protocol.api)[-1]
    if protocol.id == "ollama":
        assert not last.get("tools"), "Ollama has no tool_choice: the tools are left out"
    else:
        assert _native_tools(protocol.id, last) == ["web_search", "web_fetch"]


async def test_a_tool_error_reaches_the_model_as_an_error(
    protocol: Protocol, build: Build, sim: Sim
):
    provider = build(protocol)
    request = ask("fetch it [[sim:tool=web_fetch]]")
    chunks, _ = await collect(provider, request)
    [call] = calls_of(chunks)
    refused = "web_fetch failed: refused: 10.0.0.1 is a private address"
    chunks, error = await collect(provider, request.then(step(chunks, refused, is_error=True)))
    assert error is None
    assert refused in text_of(chunks)
    body = sim.bodies(protocol.api)[-1]
    if protocol.id == "anthropic":
        [result] = [
            b
            for m in body["messages"]
            if isinstance(m["content"], list)
            for b in m["content"]
            if b.get("type") == "tool_result"
        ]
        assert result["is_error"] is True and result["tool_use_id"] == call.id
    if protocol.id == "gemini":
        [part] = [p for c in camel(body["contents"]) for p in c["parts"] if "functionResponse" in p]
        assert part["functionResponse"]["response"] == {"error": refused}


async def test_tool_call_arguments_stream_in_pieces_in_openai_protocols(sim: Sim, build: Build):
    """Chat Completions and Responses stream a call's JSON arguments in fragments."""
    for protocol in (p for p in PROTOCOLS if p.id.startswith("openai")):
        chunks, error = await collect(build(protocol), ask("a long query [[sim:tool=web_search]]"))
        assert error is None
        [call] = calls_of(chunks)
        assert call.arguments == {"query": "a long query"}


@pytest.mark.parametrize(
    "thinking", [{"type": "adaptive"}, {"type": "enabled", "budget_tokens": 2048}], ids=str
)
async def test_claude_thinking_blocks_go_back_signed_with_tool_results(sim: Sim, thinking: Any):
    """With extended thinking the API requires the assistant turn that called a tool
    to come back starting with its signed thinking block (the simulator checks)."""
    protocol = next(p for p in PROTOCOLS if p.id == "anthropic")
    provider = AnthropicProvider(_config(sim, protocol), TIMEOUTS, thinking=thinking)
    try:
        rounds = await run_search_then_fetch(provider, QUESTION)
    finally:
        await provider.aclose()
    assert "Polly-7731" in text_of(rounds[-1])
    last = sim.bodies(protocol.api)[-1]
    assistant = [m for m in last["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 2
    for m in assistant:
        first, *_, call = m["content"]
        assert first["type"] == "thinking" and first["signature"]
        assert call["type"] == "tool_use"


async def test_gemini_thought_signatures_go_back_with_the_calls(sim: Sim, build: Build):
    protocol = next(p for p in PROTOCOLS if p.id == "gemini")
    await run_search_then_fetch(build(protocol), QUESTION)
    last = camel(sim.bodies(protocol.api)[-1])
    calls = [p for c in last["contents"] for p in c["parts"] if "functionCall" in p]
    assert len(calls) == 2 and all(p.get("thoughtSignature") for p in calls)


async def test_a_result_without_its_call_is_refused_by_the_simulator(sim: Sim, build: Build):
    """The simulator holds adapters to the protocol: an unknown call id is a 400."""
    protocol = next(p for p in PROTOCOLS if p.id == "openai-chat")
    orphan = ToolStep(
        text="",
        calls=(),
        results=(ToolResult("call_unknown", "web_search", "x"),),
    )
    _, error = await collect(build(protocol), ask("x").then(orphan))
    assert error is not None and error.status == 400
    assert json.dumps(sim.bodies(protocol.api)[-1]).count("call_unknown") == 1
