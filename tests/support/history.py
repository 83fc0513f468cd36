"""Helpers for the conversation, message, folder and settings tests.

`Api` calls the gateway with a user's token and returns `(status, json)`; paths are
sent exactly as given (`encoded=True`), so a test controls the percent-encoding.
`seed_turns` writes turns through history's own `Store` on the test database, which
is much faster than going through the broker and the worker when a test needs many
messages.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from parley_common.schemas import TurnResult, TurnStatus, Usage
from parley_history.store import Store
from yarl import URL

from tests.support.stack import Stack

_NO_BODY: Any = object()


def uid(prefix: str = "u") -> str:
    """A user id no other test uses (the stack is shared by the whole session)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def seg(value: str) -> str:
    """Percent-encode one path segment, `:` included (`%3A`)."""
    return quote(value, safe="")


@dataclass
class Api:
    stack: Stack

    async def call(
        self,
        method: str,
        path: str,
        user: str | None,
        *,
        json: Any = _NO_BODY,
        data: bytes | None = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        h = (self.stack.auth(user) if user is not None else {}) | (headers or {})
        kwargs: dict[str, Any] = {}
        if json is not _NO_BODY:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
            h.setdefault("Content-Type", "application/json")
        url = URL(f"{self.stack.url}{path}", encoded=True)
        async with self.stack.http.request(method, url, headers=h, params=params, **kwargs) as resp:
            assert resp.headers["Content-Type"].startswith("application/json"), path
            return resp.status, await resp.json()

    async def get(self, path: str, user: str | None, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, user, **kw)

    async def post(self, path: str, user: str | None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, user, **kw)

    async def patch(self, path: str, user: str | None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PATCH", path, user, **kw)

    async def put(self, path: str, user: str | None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, user, **kw)

    async def delete(self, path: str, user: str | None, **kw: Any) -> tuple[int, Any]:
        return await self.call("DELETE", path, user, **kw)

    # --- shortcuts ---------------------------------------------------------------
    async def conversations(self, user: str, **params: Any) -> tuple[int, Any]:
        return await self.get("/api/chat/conversations", user, params=params)

    async def messages(self, user: str, conversation_id: str, **params: Any) -> tuple[int, Any]:
        return await self.get(
            "/api/chat/messages", user, params={"conversation_id": conversation_id, **params}
        )

    async def truncate(self, user: str, conversation_id: str, body: Any) -> tuple[int, Any]:
        path = f"/api/chat/conversations/{seg(conversation_id)}/truncate"
        return await self.post(path, user, json=body)

    async def delete_conversation(self, user: str, conversation_id: str) -> tuple[int, Any]:
        return await self.delete(f"/api/chat/conversations/{seg(conversation_id)}", user)


def store_of(stack: Stack) -> Store:
    """history's Store on the stack's own database (the same collections and indexes)."""
    return Store(stack.db)


def turn_result(
    user: str,
    conversation_id: str,
    job_id: str,
    reply: str,
    *,
    status: TurnStatus = TurnStatus.complete,
    reasoning: str = "",
    model: str | None = "sim-model",
    usage: Usage | None = None,
) -> TurnResult:
    return TurnResult(
        job_id=job_id,
        request_id="req-seed",
        user_id=user,
        conversation_id=conversation_id,
        provider="groq",
        model=model,
        status=status,
        reply=reply,
        reasoning=reasoning,
        usage=usage if usage is not None else Usage(input_tokens=3, output_tokens=5),
        error=None if status is TurnStatus.complete else f"turn {status.value}",
        last_seq=1,
        finished_at=datetime.now(UTC),
    )


async def seed_turns(
    store: Store,
    user: str,
    messages: int,
    *,
    conversation_id: str | None = None,
    channel: str = "web",
) -> str:
    """Append `messages` messages (user, assistant, user, …); contents are `m<index>`."""
    cid = conversation_id
    index = 0
    while index < messages:
        job = f"job-{secrets.token_hex(12)}"
        turn = await store.begin_turn(
            user_id=user,
            conversation_id=cid,
            channel=channel,
            text=f"m{index}",
            image=None,
            provider="groq",
            job_id=job,
        )
        cid = turn.conversation_id
        index += 1
        if index < messages:
            await store.save_result(turn_result(user, cid, job, f"m{index}"))
            index += 1
        else:  # a question left unanswered: free the conversation for the next seed
            await store.release_turn(cid, job)
    assert cid is not None
    return cid


async def bulk_conversation(stack: Stack, user: str, messages: int, channel: str = "web") -> str:
    """A conversation of `messages` messages (`m0`, `m1`, …) written in two inserts, in the
    schema of docs/history-schema.md, for tests that need long conversations fast."""
    cid = f"{user}:{channel}:conv-{secrets.token_hex(6)}"
    now = datetime.now(UTC)
    await stack.db["conversations"].insert_one(
        {
            "_id": cid,
            "user_id": user,
            "channel": channel,
            "title": "bulk",
            "folder_id": None,
            "created_at": now,
            "updated_at": now,
            "next_seq": messages,
        }
    )
    if messages:
        await stack.db["messages"].insert_many(
            [
                {
                    "_id": f"msg-bulk-{cid}-{i}",
                    "conversation_id": cid,
                    "user_id": user,
                    "seq": i + 1,
                    "role": "user" if i % 2 == 0 else "assistant",
                    "content": f"m{i}",
                    "status": "complete",
                    "provider": "groq",
                    "job_id": f"job-bulk-{i}",
                    "created_at": now,
                }
                for i in range(messages)
            ]
        )
    return cid
