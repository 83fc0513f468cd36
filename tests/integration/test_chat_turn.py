"""One chat turn end to end: gateway → RabbitMQ → worker → Redis → history → MongoDB."""

from __future__ import annotations

import pytest
from parley_common.topology import Topology

from tests.support.infra import Infra
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("provider", ["groq", "openrouter"])
async def test_json_turn_returns_reply_conversation_and_provider(stack: Stack, provider: str):
    res = await stack.chat("user-json", {"text": "hello world", "provider": provider}, stream=False)
    assert res.status == 200
    assert res.json == {
        "reply": "Echo: hello world",
        "conversation_id": res.json["conversation_id"],
        "provider": provider,
    }
    assert res.json["conversation_id"].startswith("user-json:web:conv-")


async def test_sse_turn_streams_meta_deltas_done_in_order(stack: Stack):
    res = await stack.chat("user-sse", {"text": "stream me please", "provider": "groq"})
    assert res.status == 200
    assert res.headers["Content-Type"].startswith("text/event-stream")
    assert res.headers["Cache-Control"] == "no-cache"
    assert res.headers["X-Accel-Buffering"] == "no"
    kinds = [e.event for e in res.events]
    assert kinds[0] == "meta" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"assistant"}
    ids = [int(e.id) for e in res.events if e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == len(res.events)
    meta, done = res.events[0].data, res.events[-1].data
    assert meta["type"] == "meta" and meta["provider"] == "groq" and meta["job_id"]
    deltas = "".join(e.data["delta"] for e in res.of("assistant"))
    assert done["reply"] == deltas == "Echo: stream me please"
    assert done["conversation_id"] == meta["conversation_id"]
    assert done["provider"] == "groq"
    assert done["message_id"] and done["model"]
    assert done["usage"]["output_tokens"] > 0 and done["usage"]["input_tokens"] > 0
    for e in res.events:
        assert e.data["type"] == e.event


@pytest.mark.parametrize(
    ("path", "body_extra", "accept"),
    [
        ("/api/chat/stream", {}, None),
        ("/api/chat", {"stream": True}, None),
        ("/api/chat", {}, "application/json, text/event-stream"),
    ],
)
async def test_streaming_is_negotiated_by_path_body_or_accept(
    stack: Stack, path: str, body_extra: dict[str, object], accept: str | None
):
    headers = {"Accept": accept} if accept else {}
    res = await stack.chat(
        "user-neg",
        {"text": "x", "provider": "groq", **body_extra},
        stream=False,
        headers=headers,
        path=path,
    )
    assert res.headers["Content-Type"].startswith("text/event-stream")
    assert res.events[-1].event == "done"


async def test_reply_is_in_mongodb_when_done_arrives(stack: Stack):
    res = await stack.chat("user-saved", {"text": "persist this", "provider": "openrouter"})
    done = res.last.data
    # Read straight from the database, no waiting: `done` means saved.
    docs = await stack.messages_in_db(done["conversation_id"])
    assert [(d["role"], d["content"], d["status"]) for d in docs] == [
        ("user", "persist this", "complete"),
        ("assistant", "Echo: persist this", "complete"),
    ]
    assert docs[1]["_id"] == done["message_id"]
    assert docs[1]["provider"] == "openrouter"
    assert docs[1]["usage"]["output_tokens"] == done["usage"]["output_tokens"]


async def test_continued_conversation_sends_earlier_turns_to_provider(stack: Stack):
    first = await stack.chat("user-ctx", {"text": "my name is Ada", "provider": "groq"})
    conv = first.last.data["conversation_id"]
    before = len(stack.sim.requests)
    second = await stack.chat(
        "user-ctx", {"text": "what is my name?", "provider": "groq", "conversation_id": conv}
    )
    assert second.last.event == "done"
    assert second.last.data["conversation_id"] == conv
    sent = stack.sim.requests[before]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "my name is Ada"),
        ("assistant", "Echo: my name is Ada"),
        ("user", "what is my name?"),
    ]
    assert sent[0]["role"] == "system"


async def test_client_may_name_new_conversation_in_own_namespace(stack: Stack):
    conv = "user-named:web:conv-mine-1"
    res = await stack.chat(
        "user-named", {"text": "hi", "conversation_id": conv, "provider": "groq"}
    )
    assert res.last.event == "done" and res.last.data["conversation_id"] == conv


async def test_openai_responses_provider_streams(stack: Stack):
    res = await stack.chat("user-oai", {"text": "hello responses", "provider": "openai"})
    assert res.last.event == "done"
    assert res.last.data["reply"] == "Echo: hello responses"
    assert stack.sim.requests[-1]["api"] == "responses"


async def test_default_provider_uses_first_configured(stack: Stack):
    res = await stack.chat("user-default", {"text": "who answers?"})
    assert res.last.event == "done"
    # CONTRACT order of providers: ollama, groq, google, claude, openai, openrouter
    assert res.events[0].data["provider"] == res.last.data["provider"] == "ollama"


async def test_mood_selects_a_different_system_prompt(stack: Stack):
    prompts = []
    for mood in ("serious", "friendly", "normal"):
        await stack.chat("user-mood", {"text": "hi", "provider": "groq", "mood": mood})
        prompts.append(stack.sim.requests[-1]["body"]["messages"][0]["content"])
    assert len(set(prompts)) == 3


async def test_failing_provider_falls_back_along_the_chain(infra: Infra):
    stack = await Stack(
        infra, env={"worker": {"fallback_chain": "groq,openrouter", "provider_max_retries": 0}}
    ).start()
    try:
        text = "hello [[sim:status=503]] [[sim:fail-only=groq]]"
        res = await stack.chat("user-fb", {"text": text, "provider": "groq"})
        assert [e.event for e in res.events[:2]] == ["meta", "status"]
        assert "trying openrouter" in res.events[1].data["message"]
        done = res.last.data
        assert res.last.event == "done" and done["provider"] == "openrouter"
        assert done["reply"] == "Echo: hello"
        docs = await stack.messages_in_db(done["conversation_id"])
        assert docs[-1]["provider"] == "openrouter" and docs[-1]["status"] == "complete"
    finally:
        await stack.stop()


async def test_refused_key_falls_back_and_takes_provider_out_of_chain(infra: Infra):
    stack = await Stack(
        infra,
        env={
            "keys": {"groq_api_key": "invalid-key"},
            "worker": {"fallback_chain": "openrouter,groq"},
        },
    ).start()
    try:
        res = await stack.chat("user-key", {"text": "hi", "provider": "groq"})
        assert "auth_failed" in res.events[1].data["message"]
        assert res.last.event == "done" and res.last.data["provider"] == "openrouter"
        disabled = Topology(stack.namespace).provider_disabled("groq")
        assert await stack.worker.redis.exists(disabled)  # type: ignore[union-attr]
        # openrouter failing now has nowhere to go: groq is out of the chain.
        text = "x [[sim:status=500]] [[sim:fail-only=openrouter]]"
        res = await stack.chat("user-key", {"text": text, "provider": "openrouter"})
        assert res.last.event == "error" and res.last.data["provider"] == "openrouter"
    finally:
        await stack.stop()
