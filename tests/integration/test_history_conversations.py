"""GET /api/chat/conversations: fields, order, channel, limit, and the `before` cursor."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from tests.support.history import Api, seed_turns, seg, store_of, uid
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {"id", "user_id", "channel", "created_at", "updated_at", "folder_id", "title"}


async def test_conversation_objects_have_exactly_the_reference_fields_plus_title(stack: Stack):
    user = uid()
    res = await stack.chat(user, {"text": "What is machine learning?", "provider": "groq"})
    conv = res.last.data["conversation_id"]
    status, body = await Api(stack).conversations(user)
    assert status == 200
    assert set(body) == {"conversations", "next_before"}
    assert body["next_before"] is None
    [item] = body["conversations"]
    assert set(item) == FIELDS
    assert item["id"] == conv and item["user_id"] == user and item["channel"] == "web"
    assert item["folder_id"] is None
    assert item["title"] == "What is machine learning?"
    assert ISO_Z.match(item["created_at"]) and ISO_Z.match(item["updated_at"])
    assert item["updated_at"] >= item["created_at"]


async def test_newest_updated_first_and_a_new_message_moves_a_conversation_up(stack: Stack):
    user, store = uid(), store_of(stack)
    first = await seed_turns(store, user, 2)
    second = await seed_turns(store, user, 2)
    third = await seed_turns(store, user, 2)
    api = Api(stack)
    _, body = await api.conversations(user)
    assert [c["id"] for c in body["conversations"]] == [third, second, first]
    await seed_turns(store, user, 1, conversation_id=first)
    _, body = await api.conversations(user)
    assert [c["id"] for c in body["conversations"]] == [first, third, second]


async def test_channel_filters_and_defaults_to_web(stack: Stack):
    user, store = uid(), store_of(stack)
    web_conv = await seed_turns(store, user, 1)
    tg_conv = await seed_turns(store, user, 1, channel="telegram")
    api = Api(stack)
    _, default = await api.conversations(user)
    _, tg = await api.conversations(user, channel="telegram")
    _, none = await api.conversations(user, channel="slack")
    assert [c["id"] for c in default["conversations"]] == [web_conv]
    assert [c["id"] for c in tg["conversations"]] == [tg_conv]
    assert tg["conversations"][0]["channel"] == "telegram"
    assert none == {"conversations": [], "next_before": None}


async def test_only_the_callers_conversations_are_listed_not_a_prefix_match(stack: Stack):
    base, store = uid(), store_of(stack)
    one, twelve = f"{base}-1", f"{base}-12"
    mine = await seed_turns(store, one, 1)
    await seed_turns(store, twelve, 1)
    _, body = await Api(stack).conversations(one)
    assert [c["id"] for c in body["conversations"]] == [mine]


@pytest.mark.parametrize(
    "limit", ["0", "101", "-1", "abc", "1.5", "", " 5", "\uff11"]
)  # last: a full-width digit one
async def test_limit_outside_1_to_100_is_400(stack: Stack, limit: str):
    status, body = await Api(stack).conversations(uid(), limit=limit)
    assert status == 400
    assert body["error"] == "limit: must be an integer from 1 to 100"
    assert body["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"channel": "Web!"}, "channel"),
        ({"before": "not a cursor"}, "before"),
        ({"before": "bTE6NQ"}, "before"),  # a message cursor
        ([("limit", "5"), ("limit", "6")], "limit"),
    ],
)
async def test_bad_list_parameters_are_400_naming_the_field(
    stack: Stack, params: object, field: str
):
    status, body = await Api(stack).get("/api/chat/conversations", uid(), params=params)
    assert status == 400 and body["error"].startswith(f"{field}: "), body


async def test_limit_bounds_1_and_100_are_accepted(stack: Stack):
    user = uid()
    await seed_turns(store_of(stack), user, 1)
    for limit in ("1", "100"):
        status, body = await Api(stack).conversations(user, limit=limit)
        assert status == 200 and len(body["conversations"]) == 1


async def test_empty_list(stack: Stack):
    status, body = await Api(stack).conversations(uid())
    assert (status, body) == (200, {"conversations": [], "next_before": None})


async def test_exactly_limit_conversations_have_no_next_page(stack: Stack):
    user, store = uid(), store_of(stack)
    for _ in range(3):
        await seed_turns(store, user, 1)
    _, body = await Api(stack).conversations(user, limit=3)
    assert len(body["conversations"]) == 3 and body["next_before"] is None


async def test_limit_plus_one_conversations_give_a_second_page_of_one(stack: Stack):
    user, store = uid(), store_of(stack)
    ids = [await seed_turns(store, user, 1) for _ in range(4)]
    api = Api(stack)
    _, page1 = await api.conversations(user, limit=3)
    assert [c["id"] for c in page1["conversations"]] == ids[::-1][:3]
    assert isinstance(page1["next_before"], str)
    _, page2 = await api.conversations(user, limit=3, before=page1["next_before"])
    assert [c["id"] for c in page2["conversations"]] == [ids[0]]
    assert page2["next_before"] is None


async def test_cursor_walks_every_conversation_once_even_with_equal_timestamps(stack: Stack):
    """Ties in `updated_at` are broken by id, so no page repeats or skips one."""
    user = uid()
    same = datetime(2026, 3, 6, 11, 45, tzinfo=UTC)
    docs = [
        {
            "_id": f"{user}:web:conv-{i:02d}",
            "user_id": user,
            "channel": "web",
            "title": f"t{i}",
            "folder_id": None,
            "created_at": same,
            "updated_at": same if i % 3 else datetime(2026, 3, 6, 12, i, tzinfo=UTC),
            "next_seq": 0,
        }
        for i in range(23)
    ]
    await stack.db["conversations"].insert_many(docs)
    expected = [
        d["_id"] for d in sorted(docs, key=lambda d: (d["updated_at"], d["_id"]), reverse=True)
    ]
    api = Api(stack)
    seen: list[str] = []
    before = None
    pages = 0
    while True:
        params = {"limit": "5"} | ({"before": before} if before else {})
        status, body = await api.conversations(user, **params)
        assert status == 200
        pages += 1
        seen += [c["id"] for c in body["conversations"]]
        before = body["next_before"]
        if before is None:
            break
    assert seen == expected
    assert pages == 5  # 5 + 5 + 5 + 5 + 3


async def test_get_one_conversation(stack: Stack):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 2)
    status, body = await Api(stack).get(f"/api/chat/conversations/{seg(conv)}", user)
    assert status == 200 and set(body) == FIELDS and body["id"] == conv


async def test_rename_keeps_the_list_order(stack: Stack):
    user, store = uid(), store_of(stack)
    older = await seed_turns(store, user, 1)
    newer = await seed_turns(store, user, 1)
    api = Api(stack)
    status, body = await api.patch(
        f"/api/chat/conversations/{seg(older)}", user, json={"title": "  Renamed  "}
    )
    assert status == 200 and body["title"] == "Renamed" and body["id"] == older
    _, listed = await api.conversations(user)
    assert [c["id"] for c in listed["conversations"]] == [newer, older]
    assert listed["conversations"][1]["title"] == "Renamed"


async def test_title_is_set_from_the_first_user_message(stack: Stack):
    user = uid()
    long_text = "word " * 40
    res = await stack.chat(user, {"text": long_text, "provider": "groq"})
    conv = res.last.data["conversation_id"]
    await stack.chat(user, {"text": "second", "provider": "groq", "conversation_id": conv})
    _, body = await Api(stack).conversations(user)
    title = body["conversations"][0]["title"]
    assert len(title) <= 80 and title.startswith("word word") and title.endswith("…")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": 5}, "title"),
        ({"title": None}, "title"),
        ({"title": "a\nb"}, "title"),
        ({"folder_id": 7}, "folder_id"),
        ({"folder_id": {"$ne": None}}, "folder_id"),
        ({"user_id": "someone-else"}, "user_id"),
        ({"next_seq": 0}, "next_seq"),
    ],
)
async def test_bad_update_bodies_are_400_naming_the_field(stack: Stack, body: object, field: str):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 1)
    status, resp = await Api(stack).patch(f"/api/chat/conversations/{seg(conv)}", user, json=body)
    assert status == 400 and resp["error"].startswith(f"{field}: "), resp
    stored = await stack.db["conversations"].find_one({"_id": conv})
    assert stored is not None and stored["user_id"] == user and stored["title"] == "m0"
