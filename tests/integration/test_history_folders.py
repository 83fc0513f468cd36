"""Folders: create, list, rename, delete; moving conversations in and out; unfiling."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from parley_history.store import MAX_FOLDERS, new_folder_id

from tests.support.history import Api, seed_turns, seg, store_of, uid
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def test_create_list_rename_delete(stack: Stack):
    user, api = uid(), Api(stack)
    assert await api.get("/api/chat/folders", user) == (200, {"folders": []})
    status, work = await api.post("/api/chat/folders", user, json={"name": " Work "})
    assert status == 201
    assert set(work) == {"id", "user_id", "name", "created_at", "updated_at"}
    assert work["id"].startswith("fld-") and work["user_id"] == user and work["name"] == "Work"
    assert ISO_Z.match(work["created_at"]) and work["created_at"] == work["updated_at"]
    _, home = await api.post("/api/chat/folders", user, json={"name": "Home"})
    _, listed = await api.get("/api/chat/folders", user)
    assert [f["name"] for f in listed["folders"]] == ["Work", "Home"]  # creation order

    status, renamed = await api.patch(f"/api/chat/folders/{work['id']}", user, json={"name": "Job"})
    assert status == 200 and renamed["name"] == "Job" and renamed["id"] == work["id"]
    assert renamed["updated_at"] >= work["updated_at"]

    assert await api.delete(f"/api/chat/folders/{home['id']}", user) == (200, {"ok": True})
    _, listed = await api.get("/api/chat/folders", user)
    assert [f["id"] for f in listed["folders"]] == [work["id"]]
    assert (await api.delete(f"/api/chat/folders/{home['id']}", user))[0] == 404


async def test_move_into_and_out_of_a_folder_and_list_by_folder(stack: Stack):
    user, api, store = uid(), Api(stack), store_of(stack)
    a = await seed_turns(store, user, 1)
    b = await seed_turns(store, user, 1)
    _, folder = await api.post("/api/chat/folders", user, json={"name": "Work"})
    status, moved = await api.patch(
        f"/api/chat/conversations/{seg(a)}", user, json={"folder_id": folder["id"]}
    )
    assert status == 200 and moved["folder_id"] == folder["id"]
    _, in_folder = await api.conversations(user, folder_id=folder["id"])
    assert [c["id"] for c in in_folder["conversations"]] == [a]
    _, everything = await api.conversations(user)
    assert {c["id"]: c["folder_id"] for c in everything["conversations"]} == {
        a: folder["id"],
        b: None,
    }
    status, out = await api.patch(
        f"/api/chat/conversations/{seg(a)}", user, json={"folder_id": None}
    )
    assert status == 200 and out["folder_id"] is None
    _, in_folder = await api.conversations(user, folder_id=folder["id"])
    assert in_folder["conversations"] == []


async def test_rename_and_move_in_one_request(stack: Stack):
    user, api = uid(), Api(stack)
    conv = await seed_turns(store_of(stack), user, 1)
    _, folder = await api.post("/api/chat/folders", user, json={"name": "Work"})
    status, body = await api.patch(
        f"/api/chat/conversations/{seg(conv)}",
        user,
        json={"title": "Plans", "folder_id": folder["id"]},
    )
    assert status == 200 and (body["title"], body["folder_id"]) == ("Plans", folder["id"])


async def test_deleting_a_folder_leaves_its_conversations_unfiled(stack: Stack):
    user, api, store = uid(), Api(stack), store_of(stack)
    convs = [await seed_turns(store, user, 2) for _ in range(3)]
    _, folder = await api.post("/api/chat/folders", user, json={"name": "Work"})
    _, other = await api.post("/api/chat/folders", user, json={"name": "Other"})
    for conv, fid in zip(convs, (folder["id"], folder["id"], other["id"]), strict=True):
        await api.patch(f"/api/chat/conversations/{seg(conv)}", user, json={"folder_id": fid})
    assert await api.delete(f"/api/chat/folders/{folder['id']}", user) == (200, {"ok": True})
    _, listed = await api.conversations(user)
    folders = {c["id"]: c["folder_id"] for c in listed["conversations"]}
    assert folders == {convs[0]: None, convs[1]: None, convs[2]: other["id"]}
    for conv in convs:  # the conversations and their messages are all still there
        assert len(await stack.messages_in_db(conv)) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "  "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 3}, "name"),
        ({"name": None}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "ok", "color": "red"}, "color"),
    ],
)
async def test_bad_folder_bodies_are_400_naming_the_field(
    stack: Stack, body: dict[str, object], field: str
):
    user, api = uid(), Api(stack)
    status, resp = await api.post("/api/chat/folders", user, json=body)
    assert status == 400 and resp["error"].startswith(f"{field}: "), resp
    _, folder = await api.post("/api/chat/folders", user, json={"name": "Work"})
    status, resp = await api.patch(f"/api/chat/folders/{folder['id']}", user, json=body)
    assert status == 400 and resp["error"].startswith(f"{field}: "), resp


async def test_a_folder_name_of_100_characters_is_accepted(stack: Stack):
    status, body = await Api(stack).post("/api/chat/folders", uid(), json={"name": "x" * 100})
    assert status == 201 and len(body["name"]) == 100


async def test_folders_are_per_user(stack: Stack):
    a, b, api = uid("a"), uid("b"), Api(stack)
    await api.post("/api/chat/folders", a, json={"name": "A's"})
    assert await api.get("/api/chat/folders", b) == (200, {"folders": []})


async def test_folder_count_is_bounded(stack: Stack):
    user = uid()
    now = datetime.now(UTC)
    await stack.db["folders"].insert_many(
        [
            {
                "_id": new_folder_id(),
                "user_id": user,
                "name": f"f{i}",
                "created_at": now,
                "updated_at": now,
            }
            for i in range(MAX_FOLDERS)
        ]
    )
    status, body = await Api(stack).post("/api/chat/folders", user, json={"name": "one more"})
    assert status == 409 and body["code"] == "conflict" and body["error"].startswith("folders: ")
