"""Authentication, ownership, validation and provider failures on POST /api/chat."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
import redis.asyncio as aioredis
from parley_common.jobs import JobRegistry
from parley_common.topology import Topology
from prometheus_client import REGISTRY

from tests.support.infra import Infra
from tests.support.stack import JWT_SECRET, Stack

pytestmark = pytest.mark.integration


async def _post(stack: Stack, body: object, headers: dict[str, str]) -> tuple[int, dict]:
    async with stack.http.post(f"{stack.url}/api/chat", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _none_token() -> str:
    return jwt.encode({"sub": "user-x", "exp": int(time.time()) + 60}, None, algorithm="none")


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("missing", {}),
        ("not bearer", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ("garbage", _bearer("not-a-jwt")),
        ("alg none", _bearer(_none_token())),
        (
            "wrong key",
            _bearer(jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, "x" * 40, "HS256")),
        ),
        ("missing exp", _bearer(jwt.encode({"sub": "u"}, JWT_SECRET, "HS256"))),
        ("missing sub", _bearer(jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET, "HS256"))),
        (
            "expired",
            _bearer(jwt.encode({"sub": "u", "exp": int(time.time()) - 3600}, JWT_SECRET, "HS256")),
        ),
    ],
)
async def test_bad_tokens_get_401(stack: Stack, name: str, headers: dict[str, str]):
    status, body = await _post(stack, {"text": "hi"}, headers)
    assert status == 401, name
    assert isinstance(body["error"], str) and body["error"]


async def test_another_users_conversation_is_403(stack: Stack):
    res = await stack.chat("user-a", {"text": "mine", "provider": "groq"})
    conv = res.last.data["conversation_id"]
    status, body = await _post(
        stack, {"text": "let me in", "conversation_id": conv}, stack.auth("user-b")
    )
    assert status == 403 and "another user" in body["error"]
    # The intruder's message was not stored.
    docs = await stack.messages_in_db(conv)
    assert [d["content"] for d in docs] == ["mine", "Echo: mine"]


async def test_prefix_lookalike_user_cannot_use_or_create_in_other_namespace(stack: Stack):
    res = await stack.chat("user-1", {"text": "one", "provider": "groq"})
    conv = res.last.data["conversation_id"]
    status, _ = await _post(stack, {"text": "x", "conversation_id": conv}, stack.auth("user-12"))
    assert status == 403
    # user-1 may not create an id inside user-12's namespace.
    status, body = await _post(
        stack, {"text": "x", "conversation_id": "user-12:web:conv-planted"}, stack.auth("user-1")
    )
    assert status == 404, body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text"),
        ({"text": 5}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "hi", "provider": "skynet"}, "provider"),
        ({"text": "hi", "mood": "angry"}, "mood"),
        ({"text": "hi", "web": "yes"}, "web"),
        ({"text": "hi", "web": True}, "web"),
        ({"text": "hi", "image_base64": "aGk=", "image_mime": "image/png"}, "image_base64"),
        ({"text": "hi", "image_base64": "aGk="}, "image_mime"),
        ({"text": "hi", "image_mime": "image/png"}, "image_base64"),
        ({"text": "hi", "image_base64": "aGk=", "image_mime": "image/bmp"}, "image_mime"),
        ({"text": "hi", "image_base64": "not base64!", "image_mime": "image/png"}, "image_base64"),
        ({"text": "hi", "conversation_id": 12}, "conversation_id"),
        ({"text": "hi", "conversation_id": "a\r\nb"}, "conversation_id"),
        ([1, 2], "body"),
    ],
)
async def test_bad_input_is_400_naming_the_field(stack: Stack, body: object, field: str):
    status, resp = await _post(stack, body, stack.auth("user-400"))
    assert status == 400
    assert resp["error"].startswith(f"{field}:"), resp


async def test_unknown_provider_lists_the_options(stack: Stack):
    status, resp = await _post(stack, {"text": "hi", "provider": "skynet"}, stack.auth("u"))
    assert status == 400
    for option in ("ollama", "groq", "google", "claude", "openai", "openrouter", "default"):
        assert option in resp["error"]


async def test_unconfigured_provider_says_so(infra: Infra):
    only_groq = await Stack(infra, providers=("groq",)).start()
    try:
        body = {"text": "hi", "provider": "claude"}
        status, resp = await _post(only_groq, body, only_groq.auth("u"))
        assert status == 400 and resp["error"].startswith("provider:")
        assert "not configured" in resp["error"] and "groq" in resp["error"]
    finally:
        await only_groq.stop()


async def test_invalid_json_is_400(stack: Stack):
    headers = stack.auth("u") | {"Content-Type": "application/json"}
    async with stack.http.post(f"{stack.url}/api/chat", data=b"{nope", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"].startswith("body:")


@pytest.mark.parametrize(
    ("directive", "code", "status_text"),
    [
        ("[[sim:status=429]]", "rate_limited", "429"),
        ("[[sim:status=500]]", "provider_unavailable", "500"),
    ],
)
async def test_provider_http_error_ends_in_error_event_and_is_saved(
    stack: Stack, directive: str, code: str, status_text: str
):
    res = await stack.chat("user-fail", {"text": f"boom {directive}", "provider": "groq"})
    # Retried twice before the first token, each wait announced, then given up.
    assert [e.event for e in res.events] == ["meta", "status", "status", "error"]
    assert all("retrying" in e.data["message"] for e in res.of("status"))
    err = res.last.data
    assert err["type"] == "error" and err["code"] == code and status_text in err["error"]
    assert err["provider"] == "groq" and err["conversation_id"]
    docs = await stack.messages_in_db(err["conversation_id"])
    assert [(d["role"], d["status"]) for d in docs] == [
        ("user", "complete"),
        ("assistant", "error"),
    ]


async def test_provider_error_is_502_for_json_requests(stack: Stack):
    res = await stack.chat(
        "user-fail", {"text": "x [[sim:status=429]]", "provider": "groq"}, stream=False
    )
    assert res.status == 502
    assert "429" in res.json["error"] and res.json["code"] == "rate_limited"


async def test_dropped_provider_connection_saves_partial_reply(stack: Stack):
    res = await stack.chat(
        "user-drop", {"text": "one two three four five [[sim:drop-after=2]]", "provider": "groq"}
    )
    kinds = [e.event for e in res.events]
    assert kinds == ["meta", "assistant", "assistant", "error"]
    partial = "".join(e.data["delta"] for e in res.of("assistant"))
    assert partial == "Echo: one "
    docs = await stack.messages_in_db(res.last.data["conversation_id"])
    reply = docs[-1]
    assert reply["role"] == "assistant" and reply["status"] == "error"
    assert reply["content"] == partial
    assert res.last.data["message_id"] == reply["_id"]


async def test_429_before_first_token_is_retried_honouring_retry_after(stack: Stack):
    text = "again [[sim:status=429]] [[sim:fail-times=1]] [[sim:retry-after=0]]"
    res = await stack.chat("user-retry", {"text": text, "provider": "groq"})
    kinds = [e.event for e in res.events]
    assert kinds[:2] == ["meta", "status"] and kinds[-1] == "done"
    assert "retrying in 0s" in res.events[1].data["message"]
    assert res.last.data["reply"] == "Echo: again"
    ids = [int(e.id or -1) for e in res.events]
    assert ids == list(range(len(ids)))


async def test_a_turn_queued_but_not_listed_is_cancelled_and_answered_503(infra: Infra):
    # The job is queued while its registry entry is written. Here Redis refuses the
    # entry (the conversation's active-job set is a key of the wrong type) after the
    # job was queued: the client gets 503, the job is cancelled rather than answered
    # for nobody (the provider call would hang forever otherwise), and the
    # conversation keeps one reply saying why.
    stack = await Stack(infra, providers=("groq",), sim_handler_cancellation=True).start()
    who = "user-unlisted"
    conv = f"{who}:web:conv-unlisted"
    topo = Topology(stack.namespace)
    redis = aioredis.from_url(infra.redis_url)
    registry = JobRegistry(redis, topo)
    pubsub = redis.pubsub()
    cancelled = ("parley_worker_turns_total", {"provider": "groq", "status": "cancelled"})
    cancelled_before = REGISTRY.get_sample_value(*cancelled) or 0.0
    try:
        await redis.set(topo.conversation_jobs(conv), b"not a set")
        res = await stack.chat(
            who,
            {"text": "hello [[sim:hang]]", "conversation_id": conv, "provider": "groq"},
            stream=False,
        )
        assert res.status == 503, res.raw
        assert res.json is not None and res.json["code"] == "events_down"
        assert res.headers.get("Retry-After")
        await redis.delete(topo.conversation_jobs(conv))  # Redis is well again
        docs = await stack.messages_in_db(conv)
        job_id = docs[0]["job_id"]
        # The worker ends the job; history then announces what it holds and marks the
        # job finished (each announcement is a message on the job's channel).
        await pubsub.subscribe(topo.job_channel(job_id))
        async with asyncio.timeout(15):
            while (meta := await registry.get(job_id)) is None or meta.state != "finished":
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert (REGISTRY.get_sample_value(*cancelled) or 0.0) == cancelled_before + 1
        docs = await stack.messages_in_db(conv)
        assert [(d["role"], d["status"]) for d in docs] == [
            ("user", "complete"),
            ("assistant", "error"),
        ]
        assert docs[1]["error_code"] == "job_not_queued"
    finally:
        await pubsub.aclose()
        await redis.aclose()
        await stack.stop()
