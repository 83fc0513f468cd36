"""Ownership on every endpoint: another user's conversation or folder is 403, an unknown
one 404, a missing token 401; ids with `:` (raw or `%3A`), odd characters, look-alike
users (`u-1` / `u-12`) and ids placed in another user's namespace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.history import Api, seed_turns, seg, store_of, uid
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@dataclass
class Call:
    name: str
    method: str
    path: str  # `{c}`: the conversation id, percent-encoded; `{f}`: the folder id
    body: Any = None
    query: bool = False  # the conversation id goes in the query string instead


CONVERSATION_CALLS = [
    Call("messages", "GET", "/api/chat/messages", query=True),
    Call("get", "GET", "/api/chat/conversations/{c}"),
    Call("rename", "PATCH", "/api/chat/conversations/{c}", {"title": "mine now"}),
    Call("unfile", "PATCH", "/api/chat/conversations/{c}", {"folder_id": None}),
    Call("truncate", "POST", "/api/chat/conversations/{c}/truncate", {"keep_count": 0}),
    Call("delete", "DELETE", "/api/chat/conversations/{c}"),
    Call("chat", "POST", "/api/chat", {"text": "let me in", "provider": "groq"}),
]
FOLDER_CALLS = [
    Call("rename folder", "PATCH", "/api/chat/folders/{f}", {"name": "mine now"}),
    Call("delete folder", "DELETE", "/api/chat/folders/{f}"),
]


async def _do(
    api: Api, user: str, call: Call, conversation_id: str, folder_id: str = "", raw: bool = False
) -> tuple[int, Any]:
    c = conversation_id if raw else seg(conversation_id)
    path = call.path.replace("{c}", c).replace("{f}", seg(folder_id))
    body = call.body
    params = None
    if call.query:
        params = {"conversation_id": conversation_id}
    elif call.name == "chat":
        body = {**call.body, "conversation_id": conversation_id}
    kw: dict[str, Any] = {"params": params}
    if body is not None:
        kw["json"] = body
    return await api.call(call.method, path, user, **kw)


async def _snapshot(stack: Stack, conversation_id: str) -> tuple[Any, list[str]]:
    conv = await stack.db["conversations"].find_one({"_id": conversation_id})
    return conv, [d["content"] for d in await stack.messages_in_db(conversation_id)]


@pytest.mark.parametrize("raw", [False, True], ids=["percent-encoded", "raw-colons"])
@pytest.mark.parametrize("call", CONVERSATION_CALLS, ids=lambda c: c.name)
async def test_another_users_conversation_is_403_and_left_untouched(
    stack: Stack, call: Call, raw: bool
):
    owner, intruder = uid("owner"), uid("intruder")
    conv = await seed_turns(store_of(stack), owner, 3)
    before = await _snapshot(stack, conv)
    status, body = await _do(Api(stack), intruder, call, conv, raw=raw)
    assert status == 403, body
    assert body["code"] == "forbidden" and "another user" in body["error"]
    assert await _snapshot(stack, conv) == before


@pytest.mark.parametrize("call", CONVERSATION_CALLS[:-1], ids=lambda c: c.name)
async def test_unknown_conversation_is_404(stack: Stack, call: Call):
    user = uid()
    status, body = await _do(Api(stack), user, call, f"{user}:web:conv-nope")
    assert status == 404 and body["code"] == "not_found", body


@pytest.mark.parametrize("call", CONVERSATION_CALLS[:-1], ids=lambda c: c.name)
async def test_prefix_lookalike_users_cannot_reach_each_other(stack: Stack, call: Call):
    base = uid()
    one, twelve = f"{base}-1", f"{base}-12"
    store = store_of(stack)
    conv_1 = await seed_turns(store, one, 2)
    conv_12 = await seed_turns(store, twelve, 2)
    api = Api(stack)
    assert (await _do(api, twelve, call, conv_1))[0] == 403
    assert (await _do(api, one, call, conv_12))[0] == 403
    # An id in the look-alike's namespace that does not exist is just unknown.
    assert (await _do(api, one, call, f"{twelve}:web:conv-planted"))[0] == 404


async def test_user_cannot_create_a_conversation_in_a_lookalikes_namespace(stack: Stack):
    base = uid()
    status, _ = await Api(stack).post(
        "/api/chat",
        f"{base}-1",
        json={"text": "x", "provider": "groq", "conversation_id": f"{base}-12:web:conv-planted"},
    )
    assert status == 404
    assert await stack.db["conversations"].find_one({"_id": f"{base}-12:web:conv-planted"}) is None


async def test_ownership_is_the_stored_owner_not_the_id_prefix(stack: Stack):
    """A conversation whose id sits in B's namespace but is stored as A's belongs to A."""
    a, b = uid("a"), uid("b")
    conv = await seed_turns(store_of(stack), a, 2, conversation_id=f"{a}:web:conv-x")
    placed = f"{b}:web:conv-placed"
    doc = await stack.db["conversations"].find_one({"_id": conv})
    assert doc is not None
    await stack.db["conversations"].insert_one(doc | {"_id": placed})
    api = Api(stack)
    assert (await api.get(f"/api/chat/conversations/{seg(placed)}", a))[0] == 200
    status, body = await api.get(f"/api/chat/conversations/{seg(placed)}", b)
    assert status == 403, body
    _, listed = await api.conversations(b)
    assert listed["conversations"] == []


@pytest.mark.parametrize(
    "suffix", ["conv/slash", "conv%20pct", "conv?q=1#frag", "conv é ü", "conv:more:colons"]
)
async def test_ids_with_odd_characters_work_on_every_endpoint(stack: Stack, suffix: str):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 4, conversation_id=f"{user}:web:{suffix}")
    api = Api(stack)
    assert (await api.messages(user, conv))[1]["conversation_id"] == conv
    status, got = await api.get(f"/api/chat/conversations/{seg(conv)}", user)
    assert status == 200 and got["id"] == conv
    status, renamed = await api.patch(
        f"/api/chat/conversations/{seg(conv)}", user, json={"title": "odd"}
    )
    assert status == 200 and renamed["title"] == "odd"
    status, truncated = await api.truncate(user, conv, {"keep_count": 1})
    assert status == 200 and truncated["deleted"] == 3 and truncated["conversation_id"] == conv
    assert (await api.delete_conversation(user, conv)) == (200, {"ok": True})
    assert await stack.db["conversations"].find_one({"_id": conv}) is None


@pytest.mark.parametrize("call", FOLDER_CALLS, ids=lambda c: c.name)
async def test_another_users_folder_is_403_and_unknown_is_404(stack: Stack, call: Call):
    owner, intruder = uid("owner"), uid("intruder")
    api = Api(stack)
    _, folder = await api.post("/api/chat/folders", owner, json={"name": "Work"})
    status, body = await _do(api, intruder, call, "", folder["id"])
    assert status == 403 and body["code"] == "forbidden", body
    assert (await _do(api, intruder, call, "", "fld-unknown"))[0] == 404
    _, listed = await api.get("/api/chat/folders", owner)
    assert listed["folders"] == [folder]


async def test_a_conversation_cannot_be_moved_into_another_users_folder(stack: Stack):
    owner, intruder = uid("owner"), uid("intruder")
    api = Api(stack)
    _, folder = await api.post("/api/chat/folders", owner, json={"name": "Work"})
    conv = await seed_turns(store_of(stack), intruder, 1)
    path = f"/api/chat/conversations/{seg(conv)}"
    status, body = await api.patch(path, intruder, json={"folder_id": folder["id"]})
    assert status == 403, body
    status, body = await api.patch(path, intruder, json={"folder_id": "fld-unknown"})
    assert status == 404, body
    assert (await api.get(path, intruder))[1]["folder_id"] is None


ALL_ENDPOINTS = [
    ("GET", "/api/chat/conversations"),
    ("GET", "/api/chat/conversations/u%3Aweb%3Ac"),
    ("PATCH", "/api/chat/conversations/u%3Aweb%3Ac"),
    ("DELETE", "/api/chat/conversations/u%3Aweb%3Ac"),
    ("POST", "/api/chat/conversations/u%3Aweb%3Ac/truncate"),
    ("GET", "/api/chat/messages?conversation_id=u:web:c"),
    ("GET", "/api/chat/folders"),
    ("POST", "/api/chat/folders"),
    ("PATCH", "/api/chat/folders/fld-x"),
    ("DELETE", "/api/chat/folders/fld-x"),
    ("GET", "/api/me/settings"),
    ("PUT", "/api/me/settings"),
]


@pytest.mark.parametrize(("method", "path"), ALL_ENDPOINTS)
async def test_every_endpoint_needs_a_token(stack: Stack, method: str, path: str):
    status, body = await Api(stack).call(method, path, None, json={})
    assert status == 401 and body["code"] == "unauthorized"
    status, _ = await Api(stack).call(
        method, path, None, json={}, headers={"Authorization": "Bearer nope"}
    )
    assert status == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PATCH", "/api/chat/conversations/{c}", {"folder_id": {"$ne": None}}, "folder_id"),
        ("PATCH", "/api/chat/conversations/{c}", {"title": {"$set": "x"}}, "title"),
        ("POST", "/api/chat/conversations/{c}/truncate", {"keep_count": {"$gt": 0}}, "keep_count"),
        ("POST", "/api/chat", {"text": "x", "conversation_id": {"$ne": None}}, "conversation_id"),
        ("POST", "/api/chat/folders", {"name": {"$ne": None}}, "name"),
        ("PUT", "/api/me/settings", {"default_provider": {"$ne": None}}, "default_provider"),
    ],
)
async def test_operator_objects_where_values_belong_are_400(
    stack: Stack, method: str, path: str, body: dict[str, Any], field: str
):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 2)
    before = await _snapshot(stack, conv)
    status, resp = await Api(stack).call(method, path.replace("{c}", seg(conv)), user, json=body)
    assert status == 400 and resp["error"].startswith(f"{field}: "), resp
    assert await _snapshot(stack, conv) == before
