"""Ownership (issue #7, point 2): every operation of the OpenAPI document has an
A-versus-B test here (user B acting on user A's objects), owner fields sent in bodies
or queries never change whose object it is (mass assignment), and MongoDB operators
where a value belongs are a 400.

`test_every_operation_has_an_a_versus_b_check` fails when an operation is added to the
document without a check below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from parley_gateway import openapi

from tests.security.conftest import LiveTurn, open_turn
from tests.support.history import Api, seed_turns, seg, store_of, uid
from tests.support.stack import Stack

pytestmark = pytest.mark.security

# Operations that hold no user data and need no token.
PUBLIC = {"healthz", "readyz", "metrics", "openapi"}
# Owner-like fields a client might try to smuggle in.
OWNER_FIELDS = {"user_id": None, "owner": None, "sub": None, "_id": "x", "id": "x"}


@dataclass
class World:
    """User A's conversation (3 messages, filed in A's folder) and settings; user B."""

    stack: Stack
    api: Api
    a: str
    b: str
    conv: str
    folder: str

    async def snapshot(self) -> Any:
        db = self.stack.db
        return (
            await db["conversations"].find_one({"_id": self.conv}),
            [m["content"] for m in await self.stack.messages_in_db(self.conv)],
            await db["folders"].find({"user_id": self.a}).sort("_id").to_list(),
            await db["user_settings"].find_one({"_id": self.a}),
        )

    def owned(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return {k: (self.a if v is None else v) for k, v in overrides.items()}


async def world(stack: Stack) -> World:
    api = Api(stack)
    a, b = uid("a"), uid("b")
    conv = await seed_turns(store_of(stack), a, 3)
    _, folder = await api.post("/api/chat/folders", a, json={"name": "A's"})
    await api.patch(f"/api/chat/conversations/{seg(conv)}", a, json={"folder_id": folder["id"]})
    await api.put("/api/me/settings", a, json={"default_provider": "groq"})
    return World(stack, api, a, b, conv, folder["id"])


Check = Callable[[World], Awaitable[None]]
CHECKS: dict[str, Check] = {}


def check(*operation_ids: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        for op in operation_ids:
            CHECKS[op] = fn
        return fn

    return register


async def _owner_query_refused(w: World, path: str) -> None:
    """An owner named in the query string is refused (unknown parameters are a 400)."""
    sep = "&" if "?" in path else "?"
    for field in ("user_id", "owner"):
        status, body = await w.api.get(f"{path}{sep}{field}={w.a}", w.b)
        assert status == 400, body
        assert body["error"].startswith(f"{field}: unknown query parameter"), body


async def _expect_403(w: World, method: str, path: str, **kw: Any) -> None:
    before = await w.snapshot()
    status, body = await w.api.call(method, path, w.b, **kw)
    assert status == 403 and body["code"] == "forbidden", (method, path, body)
    assert await w.snapshot() == before


# --- chat -------------------------------------------------------------------------------
@check("chat", "chatStream")
async def _chat(w: World) -> None:
    knock = {"text": "let me in", "provider": "groq", "conversation_id": w.conv}
    for path in ("/api/chat", "/api/chat/stream"):
        await _expect_403(w, "POST", path, json=knock)
    # Owner fields in the body do not make the new conversation A's.
    res = await w.stack.chat(
        w.b, {"text": "mine", "provider": "groq", **w.owned(OWNER_FIELDS)}, stream=False
    )
    assert res.status == 200, res.raw
    new = res.json["conversation_id"]
    assert new.startswith(f"{w.b}:")
    doc = await w.stack.db["conversations"].find_one({"_id": new})
    assert doc is not None and doc["user_id"] == w.b
    _, listed = await w.api.conversations(w.a)
    assert [c["id"] for c in listed["conversations"]] == [w.conv]


async def _live_job(w: World) -> LiveTurn:
    return await open_turn(w.stack, w.a, conversation_id=w.conv)


@check("listJobs", "jobEvents", "cancelJob")
async def _jobs(w: World) -> None:
    turn = await _live_job(w)
    try:
        await _owner_query_refused(w, f"/api/chat/jobs?conversation_id={seg(w.conv)}")
        status, body = await w.api.get(f"/api/chat/jobs?conversation_id={seg(w.conv)}", w.b)
        assert status == 200 and body["jobs"] == [], body
        status, body = await w.api.get(f"/api/chat/jobs?conversation_id={seg(w.conv)}", w.a)
        assert [j["job_id"] for j in body["jobs"]] == [turn.job_id]
        async with w.stack.http.get(
            f"{w.stack.url}/api/chat/jobs/{turn.job_id}/events", headers=w.stack.auth(w.b)
        ) as resp:
            assert resp.status == 403
        status, body = await w.api.post(f"/api/chat/jobs/{turn.job_id}/cancel", w.b)
        assert status == 403, body
        status, _ = await w.api.post(f"/api/chat/jobs/{turn.job_id}/cancel", w.a)
        assert status in (200, 202)
    finally:
        events = await turn.rest()
    # B's cancel did nothing; A's own cancel ended it.
    assert events[-1].event in ("done", "error")


# --- conversations -----------------------------------------------------------------------
@check("listConversations")
async def _list_conversations(w: World) -> None:
    await seed_turns(store_of(w.stack), w.b, 1)
    await _owner_query_refused(w, "/api/chat/conversations")
    for params in ("", f"?folder_id={w.folder}"):
        status, body = await w.api.get(f"/api/chat/conversations{params}", w.b)
        assert status == 200
        assert all(c["user_id"] == w.b for c in body["conversations"])
        assert w.conv not in {c["id"] for c in body["conversations"]}


@check("getConversation")
async def _get_conversation(w: World) -> None:
    await _expect_403(w, "GET", f"/api/chat/conversations/{seg(w.conv)}")


@check("updateConversation")
async def _update_conversation(w: World) -> None:
    path = f"/api/chat/conversations/{seg(w.conv)}"
    await _expect_403(w, "PATCH", path, json={"title": "mine now"})
    await _expect_403(w, "PATCH", path, json={"folder_id": None})
    # A cannot hand its conversation to B (nor B take it) by naming an owner.
    before = await w.snapshot()
    for who, owner in ((w.a, w.b), (w.b, w.b)):
        for field in ("user_id", "owner"):
            status, body = await w.api.patch(path, who, json={"title": "x", field: owner})
            assert status == 400 and body["error"].startswith(f"{field}: unknown field"), body
    assert await w.snapshot() == before


@check("deleteConversation")
async def _delete_conversation(w: World) -> None:
    await _expect_403(w, "DELETE", f"/api/chat/conversations/{seg(w.conv)}")


@check("truncateConversation")
async def _truncate_conversation(w: World) -> None:
    await _expect_403(
        w, "POST", f"/api/chat/conversations/{seg(w.conv)}/truncate", json={"keep_count": 0}
    )


@check("listMessages")
async def _list_messages(w: World) -> None:
    await _expect_403(w, "GET", "/api/chat/messages", params={"conversation_id": w.conv})
    await _owner_query_refused(w, f"/api/chat/messages?conversation_id={seg(w.conv)}")


# --- folders -------------------------------------------------------------------------------
@check("listFolders")
async def _list_folders(w: World) -> None:
    await _owner_query_refused(w, "/api/chat/folders")
    status, body = await w.api.get("/api/chat/folders", w.b)
    assert status == 200 and body["folders"] == [], body


@check("createFolder")
async def _create_folder(w: World) -> None:
    before = await w.snapshot()
    for field, value in w.owned(OWNER_FIELDS).items():
        status, body = await w.api.post(
            "/api/chat/folders", w.b, json={"name": "planted", field: value}
        )
        assert status == 400 and body["error"].startswith(f"{field}: unknown field"), body
    status, folder = await w.api.post("/api/chat/folders", w.b, json={"name": "B's"})
    assert status == 201 and folder["user_id"] == w.b
    assert await w.snapshot() == before


@check("renameFolder")
async def _rename_folder(w: World) -> None:
    await _expect_403(w, "PATCH", f"/api/chat/folders/{seg(w.folder)}", json={"name": "mine"})


@check("deleteFolder")
async def _delete_folder(w: World) -> None:
    await _expect_403(w, "DELETE", f"/api/chat/folders/{seg(w.folder)}")


# --- settings -----------------------------------------------------------------------------
@check("getSettings")
async def _get_settings(w: World) -> None:
    await _owner_query_refused(w, "/api/me/settings")
    assert await w.api.get("/api/me/settings", w.b) == (200, {"default_provider": None})


@check("putSettings")
async def _put_settings(w: World) -> None:
    before = await w.snapshot()
    assert (await w.api.put("/api/me/settings", w.b, json={"default_provider": "claude"}))[0] == 200
    status, body = await w.api.put(
        "/api/me/settings", w.b, json={"default_provider": None, "user_id": w.a}
    )
    assert status == 400 and body["error"].startswith("user_id: unknown field"), body
    assert await w.snapshot() == before


# --- the tests ----------------------------------------------------------------------------
def _operations() -> list[str]:
    return sorted(
        op["operationId"]
        for item in openapi.document()["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    )


def test_every_operation_has_an_a_versus_b_check():
    assert set(_operations()) == set(CHECKS) | PUBLIC


async def test_the_served_document_is_the_one_checked(stack: Stack):
    status, served = await Api(stack).get("/api/openapi.json", None)
    assert status == 200 and served == openapi.document()


@pytest.mark.parametrize("operation", sorted(set(_operations()) - PUBLIC))
async def test_user_b_cannot_reach_user_a_through(stack: Stack, operation: str):
    assert operation in CHECKS, f"no A-versus-B check for {operation}"
    await CHECKS[operation](await world(stack))


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/api/openapi.json"])
async def test_public_endpoints_hold_no_user_data(stack: Stack, path: str):
    w = await world(stack)
    async with stack.http.get(f"{stack.url}{path}") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert w.a not in text and w.conv not in text


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/chat", {"text": {"$ne": None}}, "text"),
        ("POST", "/api/chat", {"text": "x", "conversation_id": {"$ne": None}}, "conversation_id"),
        ("POST", "/api/chat", {"text": "x", "conversation_id": ["a", "b"]}, "conversation_id"),
        ("POST", "/api/chat", {"text": "x", "provider": {"$in": ["groq"]}}, "provider"),
        ("POST", "/api/chat", {"text": "x", "channel": {"$regex": ".*"}}, "channel"),
        ("PATCH", "/api/chat/conversations/{c}", {"folder_id": {"$ne": None}}, "folder_id"),
        ("PATCH", "/api/chat/conversations/{c}", {"title": {"$set": "x"}}, "title"),
        ("PATCH", "/api/chat/conversations/{c}", {"$set": {"user_id": "x"}}, "$set"),
        ("POST", "/api/chat/conversations/{c}/truncate", {"keep_count": {"$gt": 0}}, "keep_count"),
        ("POST", "/api/chat/folders", {"name": {"$ne": None}}, "name"),
        ("PATCH", "/api/chat/folders/{f}", {"name": {"$exists": True}}, "name"),
        ("PUT", "/api/me/settings", {"default_provider": {"$ne": None}}, "default_provider"),
    ],
)
async def test_operator_objects_in_bodies_are_400(
    stack: Stack, method: str, path: str, body: dict[str, Any], field: str
):
    w = await world(stack)
    before = await w.snapshot()
    path = path.replace("{c}", seg(w.conv)).replace("{f}", seg(w.folder))
    status, resp = await w.api.call(method, path, w.a, json=body)
    assert status == 400 and resp["error"].startswith(f"{field}:"), resp
    assert await w.snapshot() == before


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("conversation_id[$ne]=", 400),
        ("conversation_id=x&conversation_id[$ne]=", 400),
        ("conversation_id[]=a&conversation_id[]=b", 400),
        ("conversation_id=a&conversation_id=b", 400),
        ("conversation_id=%7B%22%24ne%22%3A+null%7D", 404),  # the JSON text of {"$ne": null}
    ],
)
async def test_operator_shaped_query_strings_reach_nothing(stack: Stack, query: str, status: int):
    """Query values are plain strings: `[$ne]`-style keys are unknown parameters (400),
    a repeated one is a 400, and an operator written as JSON is an id nobody owns."""
    w = await world(stack)
    got, body = await w.api.get(f"/api/chat/messages?{query}", w.b)
    assert got == status, body
