"""DELETE a conversation and POST …/truncate: exact counts, edges, and a delete mid-reply."""

from __future__ import annotations

import secrets

import aiohttp
import pytest
from parley_common.schemas import ImageRef
from parley_history.metrics import RESULTS_EARLY

from tests.support.history import Api, bulk_conversation, seed_turns, store_of, uid
from tests.support.sse import SseEvent, parse_sse
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


async def _contents(stack: Stack, conversation_id: str) -> list[str]:
    return [d["content"] for d in await stack.messages_in_db(conversation_id)]


# --- delete ---------------------------------------------------------------------------
async def test_delete_removes_conversation_messages_and_images(stack: Stack):
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 4)
    await store.begin_turn(
        user_id=user,
        conversation_id=conv,
        channel="web",
        text="look at this",
        image=ImageRef(mime="image/png", data_base64="iVBORw0KGgo="),
        provider="groq",
        job_id=f"job-img-{user}",
    )
    other = await seed_turns(store, user, 2)
    api = Api(stack)
    status, body = await api.delete_conversation(user, conv)
    assert (status, body) == (200, {"ok": True})
    assert await stack.db["conversations"].find_one({"_id": conv}) is None
    assert await stack.db["messages"].count_documents({"conversation_id": conv}) == 0
    _, listed = await api.conversations(user)
    assert [c["id"] for c in listed["conversations"]] == [other]
    assert await _contents(stack, other) == ["m0", "m1"]  # the other one is untouched
    status, body = await api.messages(user, conv)
    assert status == 404 and body["code"] == "not_found"
    status, body = await api.delete_conversation(user, conv)
    assert status == 404


async def _read_until(
    lines: list[str], content: aiohttp.StreamReader, want: set[str]
) -> tuple[list[SseEvent], bool]:
    """Read SSE lines until an event of a wanted kind has arrived."""
    async for raw in content:
        lines.append(raw.decode())
        events, _ = parse_sse("".join(lines))
        if any(e.event in want for e in events):
            return events, True
    events, _ = parse_sse("".join(lines))
    return events, False


async def test_a_reply_arriving_after_delete_does_not_bring_the_conversation_back(stack: Stack):
    user = uid()
    body = {
        "text": "one two three four five six seven eight [[sim:delay-ms=40]]",
        "provider": "groq",
    }
    headers = stack.auth(user) | {"Accept": "text/event-stream"}
    early = RESULTS_EARLY._value.get()
    async with stack.http.post(f"{stack.url}/api/chat", json=body, headers=headers) as resp:
        assert resp.status == 200
        lines: list[str] = []
        events, found = await _read_until(lines, resp.content, {"assistant"})
        assert found, [e.event for e in events]
        conv = events[0].data["conversation_id"]
        status, deleted = await Api(stack).delete_conversation(user, conv)
        assert (status, deleted) == (200, {"ok": True})
        events, found = await _read_until(lines, resp.content, {"done", "error"})
    assert found
    assert events[-1].event == "error"
    assert events[-1].data["code"] == "conversation_deleted"
    # Known to be deleted (not a reply that came before its new conversation was
    # stored): announced at once, never put back to wait for it.
    assert RESULTS_EARLY._value.get() == early
    assert await stack.db["conversations"].find_one({"_id": conv}) is None
    assert await stack.db["messages"].count_documents({"conversation_id": conv}) == 0


# --- truncate -------------------------------------------------------------------------
async def test_truncate_keeps_the_newest_and_reports_the_exact_count(stack: Stack):
    user = uid()
    conv = await bulk_conversation(stack, user, 35)
    status, body = await Api(stack).truncate(user, conv, {"keep_count": 10})
    assert status == 200
    assert body == {"ok": True, "conversation_id": conv, "keep_count": 10, "deleted": 25}
    assert await _contents(stack, conv) == [f"m{i}" for i in range(25, 35)]


@pytest.mark.parametrize(
    ("messages", "body", "deleted", "kept"),
    [
        (6, {"keep_count": 0}, 6, 0),
        (6, {}, 6, 0),  # keep_count defaults to 0
        (6, None, 6, 0),  # so does an empty body
        (6, {"keep_count": 6}, 0, 6),
        (6, {"keep_count": 7}, 0, 6),
        (6, {"keep_count": 10**12}, 0, 6),
        (6, {"keep_count": 1}, 5, 1),
        (6, {"keep_count": 5}, 1, 5),
        (1, {"keep_count": 0}, 1, 0),
    ],
)
async def test_truncate_edges(
    stack: Stack, messages: int, body: dict[str, int] | None, deleted: int, kept: int
):
    user = uid()
    conv = await seed_turns(store_of(stack), user, messages)
    api = Api(stack)
    if body is None:
        status, resp = await api.post(
            f"/api/chat/conversations/{conv.replace(':', '%3A')}/truncate", user
        )
        keep = 0
    else:
        status, resp = await api.truncate(user, conv, body)
        keep = body.get("keep_count", 0)
    assert status == 200
    assert resp == {"ok": True, "conversation_id": conv, "keep_count": keep, "deleted": deleted}
    assert await _contents(stack, conv) == [f"m{i}" for i in range(messages - kept, messages)]


async def test_truncating_twice_deletes_nothing_the_second_time(stack: Stack):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 9)
    api = Api(stack)
    _, first = await api.truncate(user, conv, {"keep_count": 4})
    _, second = await api.truncate(user, conv, {"keep_count": 4})
    assert (first["deleted"], second["deleted"]) == (5, 0)


async def test_messages_after_truncate_continue_in_order(stack: Stack):
    user, store = uid(), store_of(stack)
    conv = await seed_turns(store, user, 5)
    api = Api(stack)
    await api.truncate(user, conv, {"keep_count": 2})
    await seed_turns(store, user, 2, conversation_id=conv)
    _, body = await api.messages(user, conv)
    assert [m["content"] for m in body["messages"]] == ["m3", "m4", "m0", "m1"]
    seqs = [d["seq"] for d in await stack.messages_in_db(conv)]
    assert seqs == [4, 5, 6, 7]


async def test_truncate_of_a_long_conversation(stack: Stack):
    user = uid()
    conv = await bulk_conversation(stack, user, 5000)
    status, body = await Api(stack).truncate(user, conv, {"keep_count": 7})
    assert status == 200 and body["deleted"] == 4993
    assert await _contents(stack, conv) == [f"m{i}" for i in range(4993, 5000)]


@pytest.mark.parametrize(
    "body",
    [
        {"keep_count": -1},
        {"keep_count": 1.5},
        {"keep_count": 2.0},
        {"keep_count": "3"},
        {"keep_count": True},
        {"keep_count": False},
        {"keep_count": None},
        {"keep_count": [1]},
        {"keep_count": {"$gt": 0}},
    ],
)
async def test_bad_keep_count_is_400_and_deletes_nothing(stack: Stack, body: dict[str, object]):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 3)
    status, resp = await Api(stack).truncate(user, conv, body)
    assert status == 400
    assert resp["error"] == "keep_count: must be a non-negative integer"
    assert len(await _contents(stack, conv)) == 3


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b"{nope", "body"), (b"[1]", "body"), (b'{"keep_count": 1, "x": 2}', "x")],
)
async def test_bad_truncate_bodies_are_400(stack: Stack, raw: bytes, field: str):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 2)
    status, resp = await Api(stack).post(
        f"/api/chat/conversations/{conv.replace(':', '%3A')}/truncate", user, data=raw
    )
    assert status == 400 and resp["error"].startswith(f"{field}: ")


async def test_truncate_of_an_unknown_conversation_is_404(stack: Stack):
    user = uid()
    status, body = await Api(stack).truncate(
        user, f"{user}:web:conv-{secrets.token_hex(4)}", {"keep_count": 0}
    )
    assert status == 404 and body["code"] == "not_found"
