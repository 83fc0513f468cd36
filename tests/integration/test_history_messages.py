"""GET /api/chat/messages: the newest `limit` messages, oldest first, with a cursor back."""

from __future__ import annotations

import re

import pytest
from parley_common.schemas import TurnStatus, Usage

from tests.support.history import (
    Api,
    bulk_conversation,
    seed_turns,
    store_of,
    turn_result,
    uid,
)
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def test_messages_of_a_chat_turn_have_reference_fields_and_known_extensions(stack: Stack):
    user = uid()
    res = await stack.chat(user, {"text": "What is machine learning?", "provider": "groq"})
    done = res.last.data
    status, body = await Api(stack).messages(user, done["conversation_id"])
    assert status == 200
    assert set(body) == {"conversation_id", "messages", "next_before"}
    assert body["conversation_id"] == done["conversation_id"] and body["next_before"] is None
    question, answer = body["messages"]
    assert set(question) == {"id", "role", "content", "created_at", "status", "provider"}
    assert question["role"] == "user" and question["content"] == "What is machine learning?"
    assert question["status"] == "complete" and question["provider"] == "groq"
    assert answer["id"] == done["message_id"]
    assert answer["role"] == "assistant" and answer["content"] == done["reply"]
    assert answer["status"] == "complete"
    assert answer["provider"] == "groq" and answer["model"] == done["model"]
    assert answer["usage"] == done["usage"]
    assert "reasoning" not in answer  # unknown for this reply, so left out
    for m in (question, answer):
        assert ISO_Z.match(m["created_at"])


async def test_reasoning_and_failure_statuses_are_shown(stack: Stack):
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 1)
    for status, job in ((TurnStatus.cancelled, "job-c"), (TurnStatus.error, "job-e")):
        await store.save_result(
            turn_result(
                user,
                conv,
                f"{job}-{user}",
                "partial",
                status=status,
                reasoning="thinking…",
                usage=Usage(input_tokens=4, output_tokens=None),
            )
        )
    _, body = await Api(stack).messages(user, conv)
    cancelled, failed = body["messages"][1:]
    assert cancelled["status"] == "cancelled" and failed["status"] == "error"
    assert cancelled["reasoning"] == "thinking…" and cancelled["content"] == "partial"
    assert cancelled["usage"] == {"input_tokens": 4}


async def test_the_newest_limit_messages_come_oldest_first(stack: Stack):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 7)
    status, body = await Api(stack).messages(user, conv, limit=3)
    assert status == 200
    assert [m["content"] for m in body["messages"]] == ["m4", "m5", "m6"]
    assert isinstance(body["next_before"], str)


async def test_default_limit_is_50(stack: Stack):
    user = uid()
    conv = await bulk_conversation(stack, user, 51)
    _, body = await Api(stack).messages(user, conv)
    assert len(body["messages"]) == 50 and body["messages"][0]["content"] == "m1"
    assert body["next_before"] is not None


async def test_exactly_limit_messages_have_no_next_page(stack: Stack):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 4)
    _, body = await Api(stack).messages(user, conv, limit=4)
    assert [m["content"] for m in body["messages"]] == ["m0", "m1", "m2", "m3"]
    assert body["next_before"] is None


async def test_limit_plus_one_gives_a_page_of_one_before(stack: Stack):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 5)
    api = Api(stack)
    _, page1 = await api.messages(user, conv, limit=4)
    assert [m["content"] for m in page1["messages"]] == ["m1", "m2", "m3", "m4"]
    _, page2 = await api.messages(user, conv, limit=4, before=page1["next_before"])
    assert [m["content"] for m in page2["messages"]] == ["m0"]
    assert page2["next_before"] is None


async def test_empty_conversation(stack: Stack):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 2)
    api = Api(stack)
    await api.truncate(user, conv, {"keep_count": 0})
    status, body = await api.messages(user, conv)
    assert (status, body) == (200, {"conversation_id": conv, "messages": [], "next_before": None})


async def test_cursor_walks_back_through_every_message_once(stack: Stack):
    user = uid()
    conv = await bulk_conversation(stack, user, 101)
    api = Api(stack)
    pages: list[list[str]] = []
    before = None
    while True:
        params = {"limit": "20"} | ({"before": before} if before else {})
        status, body = await api.messages(user, conv, **params)
        assert status == 200
        pages.append([m["content"] for m in body["messages"]])
        before = body["next_before"]
        if before is None:
            break
    assert [len(p) for p in pages] == [20, 20, 20, 20, 20, 1]
    walked = [c for page in reversed(pages) for c in page]
    assert walked == [f"m{i}" for i in range(101)]


async def test_order_follows_the_sequence_not_the_clock(stack: Stack):
    """A reply whose `finished_at` is earlier than the question still comes after it."""
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 1)
    late_clock = turn_result(user, conv, f"job-clock-{user}", "answer")
    early = late_clock.model_copy(update={"finished_at": late_clock.finished_at.replace(year=2001)})
    await store.save_result(early)
    _, body = await Api(stack).messages(user, conv)
    assert [m["content"] for m in body["messages"]] == ["m0", "answer"]
    assert body["messages"][1]["created_at"].startswith("2001-")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "conversation_id"),
        ({"conversation_id": ""}, "conversation_id"),
        ({"conversation_id": "a\tb"}, "conversation_id"),
        ({"conversation_id": "x" * 300}, "conversation_id"),
        ({"conversation_id": "u:web:c", "limit": "0"}, "limit"),
        ({"conversation_id": "u:web:c", "limit": "101"}, "limit"),
        ({"conversation_id": "u:web:c", "before": "***"}, "before"),
        ({"conversation_id": "u:web:c", "conversation_id[$ne]": "x"}, "conversation_id[$ne]"),
        ([("conversation_id", "a"), ("conversation_id", "b")], "conversation_id"),
    ],
)
async def test_bad_message_parameters_are_400_naming_the_field(
    stack: Stack, params: object, field: str
):
    status, body = await Api(stack).get("/api/chat/messages", uid(), params=params)
    assert status == 400 and body["error"].startswith(f"{field}: "), body


async def test_a_cursor_that_does_not_decode_to_a_seq_is_400(stack: Stack):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 3)
    api = Api(stack)
    _, convs = await api.conversations(user, limit=1)
    assert convs["next_before"] is None
    status, body = await api.messages(user, conv, before="YzE6MTox")  # "c1:1:1"
    assert status == 400 and body["error"] == "before: not a valid cursor"
