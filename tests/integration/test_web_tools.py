"""`web: true` end to end for every provider: gateway → RabbitMQ → worker (tool loop) →
provider SDK → simulator, with a local SearXNG-compatible server and local pages.

The simulator calls `web_search`, then `web_fetch` on the first hit, in its own
protocol, then answers quoting the page; the client sees a readable `status`
event per tool step, the answer, and `done.sources`, which history saved.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from parley_worker.prompts import WEB_PROMPT
from parley_worker.tools.untrusted import BEGIN, NOTICE

from tests.support.infra import Infra
from tests.support.sse import iter_sse
from tests.support.stack import Stack
from tests.support.web import LocalWeb

pytestmark = pytest.mark.integration

PROVIDERS = ["ollama", "groq", "google", "claude", "openai", "openrouter"]
MAX_STEPS = 2


@pytest.fixture(scope="module")
async def local_web() -> AsyncIterator[LocalWeb]:
    site = await LocalWeb().start()
    yield site
    await site.stop()


@pytest.fixture(scope="module")
async def web_stack(infra: Infra, local_web: LocalWeb) -> AsyncIterator[Stack]:
    """A stack whose gateway and worker know the local search server; the worker may
    fetch from loopback (WEB_FETCH_ALLOW_PRIVATE=1), where the local pages are."""
    search = {"web_search_url": local_web.search_url}
    s = await Stack(
        infra,
        env={
            "gateway": search,
            "worker": search
            | {
                "web_fetch_allow_private": True,
                "web_max_tool_steps": MAX_STEPS,
                "web_fetch_total_timeout": 5.0,
            },
        },
    ).start()
    yield s
    await s.stop()


def sim_bodies(stack: Stack, needle: str) -> list[dict[str, Any]]:
    """The provider requests of one test, found by a word only its question has."""
    return [r["body"] for r in stack.sim.requests if needle in json.dumps(r["body"])]


def tool_names(body: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        names.append(fn.get("name"))
        for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
            names.append(decl["name"])
    return [n for n in names if n]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_web_turn_searches_reads_and_answers_with_sources(
    web_stack: Stack, local_web: LocalWeb, provider: str
):
    question = f"who is polly {provider}q"
    res = await web_stack.chat(
        f"user-web-{provider}",
        {
            "text": f"{question} [[sim:tool=web_search,web_fetch]]",
            "provider": provider,
            "web": True,
        },
    )
    kinds = [e.event for e in res.events]
    assert kinds[0] == "meta" and kinds[-1] == "done", res.raw
    statuses = [e.data["message"] for e in res.of("status")]
    assert statuses == [
        f"Searching the web for “{question}”…",
        f"Reading 127.0.0.1:{local_web.port}…",
    ]
    assert kinds.index("status") < kinds.index("assistant")
    done = res.last.data
    assert done["reply"] == "".join(e.data["delta"] for e in res.of("assistant"))
    assert done["reply"].startswith(f"Echo: {question} [tool result: Page {local_web.pages_url}")
    assert "Polly-7731 is a grey parrot" in done["reply"], "the page reached the model"
    polly, walnuts = f"{local_web.pages_url}/polly", f"{local_web.pages_url}/walnuts"
    assert done["sources"] == [
        {"url": polly, "title": "Polly the parrot"},
        {"url": walnuts, "title": "Walnuts"},
    ]
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    saved = (await web_stack.messages_in_db(done["conversation_id"]))[-1]
    assert (saved["role"], saved["status"], saved["content"]) == (
        "assistant",
        "complete",
        done["reply"],
    )
    assert saved["sources"] == done["sources"]
    # The provider was called three times: search, fetch, answer; tools declared natively.
    bodies = sim_bodies(web_stack, f"{provider}q")
    assert len(bodies) == 3
    assert tool_names(bodies[0]) == ["web_search", "web_fetch"]
    # The page came back as delimited untrusted data, under the web system prompt.
    last = json.dumps(bodies[-1])
    assert json.dumps(BEGIN)[1:-1] in last and json.dumps(NOTICE)[1:-1] in last
    assert json.dumps(WEB_PROMPT)[1:-1] in last


async def test_the_messages_api_lists_the_sources(web_stack: Stack):
    who = "user-web-messages"
    res = await web_stack.chat(
        who, {"text": "srcs [[sim:tool=web_search]]", "provider": "groq", "web": True}
    )
    done = res.last.data
    async with web_stack.http.get(
        f"{web_stack.url}/api/chat/messages",
        params={"conversation_id": done["conversation_id"]},
        headers=web_stack.auth(who),
    ) as resp:
        assert resp.status == 200
        messages = (await resp.json())["messages"]
    user, reply = messages
    assert "sources" not in user
    assert reply["sources"] == done["sources"] and len(reply["sources"]) == 2


@pytest.mark.parametrize("provider", ["claude", "groq"])
async def test_without_web_no_tools_are_offered(web_stack: Stack, provider: str):
    tag = f"noweb{provider}"
    res = await web_stack.chat(
        f"user-noweb-{provider}",
        {"text": f"{tag} [[sim:tool=web_search,web_fetch]]", "provider": provider},
    )
    assert res.last.event == "done" and res.of("status") == []
    assert res.last.data["reply"] == f"Echo: {tag}"
    assert res.last.data["sources"] is None
    [body] = sim_bodies(web_stack, tag)
    assert tool_names(body) == [] and "tool_choice" not in body
    assert WEB_PROMPT not in json.dumps(body)
    saved = (await web_stack.messages_in_db(res.last.data["conversation_id"]))[-1]
    assert "sources" not in saved


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_number_of_tool_steps_is_bounded(web_stack: Stack, provider: str):
    """WEB_MAX_TOOL_STEPS=2: a model that keeps searching gets two steps, then must answer."""
    tag = f"bound{provider}"
    chain = ",".join(["web_search"] * 5)
    res = await web_stack.chat(
        f"user-bound-{provider}",
        {"text": f"{tag} [[sim:tool={chain}]]", "provider": provider, "web": True},
    )
    assert res.last.event == "done", res.raw
    assert len(res.of("status")) == MAX_STEPS
    assert res.last.data["reply"].startswith(f"Echo: {tag} [tool result: Search results")
    bodies = sim_bodies(web_stack, tag)
    assert len(bodies) == MAX_STEPS + 1


async def test_a_json_web_reply_keeps_the_reference_shape(web_stack: Stack):
    res = await web_stack.chat(
        "user-web-json",
        {"text": "json [[sim:tool=web_search,web_fetch]]", "provider": "claude", "web": True},
        stream=False,
    )
    assert res.status == 200
    assert set(res.json) == {"reply", "conversation_id", "provider"}
    assert "Polly-7731" in res.json["reply"]


async def test_a_failed_fetch_is_told_to_the_model_which_still_answers(
    web_stack: Stack, local_web: LocalWeb
):
    url = f"{local_web.pages_url}/image"
    res = await web_stack.chat(
        "user-web-fail",
        {"text": f"{url} [[sim:tool=web_fetch]]", "provider": "openai", "web": True},
    )
    assert res.last.event == "done", res.raw
    assert [e.data["message"] for e in res.of("status")] == [f"Reading 127.0.0.1:{local_web.port}…"]
    assert (
        "[tool result: web_fetch failed: unsupported content type image/png]"
        in (res.last.data["reply"])
    )
    assert res.last.data["sources"] == []


async def test_cancel_during_a_tool_step_ends_the_turn(web_stack: Stack, local_web: LocalWeb):
    who = "user-web-cancel"
    url = f"{local_web.pages_url}/slow?s=4"
    async with web_stack.http.post(
        f"{web_stack.url}/api/chat",
        json={"text": f"{url} [[sim:tool=web_fetch]]", "provider": "groq", "web": True},
        headers=web_stack.auth(who) | {"Accept": "text/event-stream"},
    ) as resp:
        stream = iter_sse(resp)
        meta = await anext(stream)
        status = await anext(stream)
        assert status.event == "status" and status.data["message"].startswith("Reading")
        started = asyncio.get_running_loop().time()
        async with web_stack.http.post(
            f"{web_stack.url}/api/chat/jobs/{meta.data['job_id']}/cancel",
            headers=web_stack.auth(who),
        ) as r:
            assert r.status == 202
        events = [ev async for ev in stream]
    assert events[-1].event == "error" and events[-1].data["code"] == "cancelled"
    assert asyncio.get_running_loop().time() - started < 3, "the fetch did not hold the cancel"


async def test_web_without_a_search_backend_is_a_400(stack: Stack):
    res = await stack.chat("user-web-400", {"text": "hi", "web": True}, stream=False)
    assert res.status == 400
    assert res.json == {
        "error": "web: no web search backend is configured",
        "code": "web_search_not_configured",
    }
