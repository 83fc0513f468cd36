"""Conversations and messages in MongoDB (PyMongo's async API).

Collections:
- `conversations`: `_id` (the conversation id), `user_id`, `channel`, `title`,
  `folder_id`, `created_at`, `updated_at`, `next_seq`.
- `messages`: `_id` (message id), `conversation_id`, `user_id`, `seq`, `role`,
  `content`, `status`, `provider`, `model`, `reasoning`, `usage`, `job_id`,
  `image`, `error`, `created_at`.

Messages are ordered by `seq`, taken from the conversation's `next_seq` counter
with one atomic `$inc`, so concurrent appends keep a total order. Message ids are
derived from the job id (`msg-<job_id>-u` / `-a`), which makes both writes of a
turn idempotent: a redelivered turn event meets a duplicate key, not a second copy.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from parley_common.schemas import ContextMessage, ImageRef, TurnResult
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_history.errors import Forbidden, NotFound

Doc = dict[str, Any]

TITLE_MAX = 80


def now() -> datetime:
    return datetime.now(UTC)


def new_conversation_id(user_id: str, channel: str) -> str:
    return f"{user_id}:{channel}:conv-{secrets.token_urlsafe(12)}"


def user_message_id(job_id: str) -> str:
    return f"msg-{job_id}-u"


def reply_message_id(job_id: str) -> str:
    return f"msg-{job_id}-a"


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_MAX else line[: TITLE_MAX - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class BegunTurn:
    conversation_id: str
    user_message_id: str
    created: bool
    context: list[ContextMessage]


class Store:
    def __init__(self, db: AsyncDatabase[Doc], context_messages: int = 40) -> None:
        self.db = db
        self.conversations = db["conversations"]
        self.messages = db["messages"]
        self.context_messages = context_messages

    async def ensure_indexes(self) -> None:
        """Idempotent: create_index with the same spec is a no-op."""
        await self.conversations.create_index(
            [("user_id", ASCENDING), ("channel", ASCENDING), ("updated_at", DESCENDING)],
            name="by_user_channel_updated",
        )
        await self.messages.create_index(
            [("conversation_id", ASCENDING), ("seq", ASCENDING)],
            name="by_conversation_seq",
            unique=True,
        )
        await self.messages.create_index([("job_id", ASCENDING)], name="by_job")

    async def owned_conversation(self, user_id: str, conversation_id: str) -> Doc:
        conv = await self.conversations.find_one({"_id": conversation_id})
        if conv is None:
            raise NotFound("conversation not found")
        if conv["user_id"] != user_id:
            raise Forbidden("conversation belongs to another user")
        return conv

    async def _create_conversation(
        self, user_id: str, conversation_id: str, channel: str, title: str
    ) -> bool:
        ts = now()
        try:
            await self.conversations.insert_one(
                {
                    "_id": conversation_id,
                    "user_id": user_id,
                    "channel": channel,
                    "title": title,
                    "folder_id": None,
                    "created_at": ts,
                    "updated_at": ts,
                    "next_seq": 0,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def _next_seq(self, conversation_id: str, touch: bool = True) -> int | None:
        update: Doc = {"$inc": {"next_seq": 1}}
        if touch:
            update["$set"] = {"updated_at": now()}
        conv = await self.conversations.find_one_and_update(
            {"_id": conversation_id},
            update,
            projection={"next_seq": 1},
            return_document=ReturnDocument.AFTER,
        )
        return None if conv is None else int(conv["next_seq"])

    async def begin_turn(
        self,
        *,
        user_id: str,
        conversation_id: str | None,
        channel: str,
        text: str,
        image: ImageRef | None,
        provider: str,
        job_id: str,
    ) -> BegunTurn:
        created = False
        if conversation_id is None:
            conversation_id = new_conversation_id(user_id, channel)
            created = await self._create_conversation(
                user_id, conversation_id, channel, title_from(text)
            )
        else:
            conv = await self.conversations.find_one({"_id": conversation_id}, {"user_id": 1})
            if conv is None:
                # A client may name a new conversation only inside its own namespace.
                if not conversation_id.startswith(f"{user_id}:"):
                    raise NotFound("conversation not found")
                created = await self._create_conversation(
                    user_id, conversation_id, channel, title_from(text)
                )
            if not created:
                await self.owned_conversation(user_id, conversation_id)

        msg_id = user_message_id(job_id)
        existing = await self.messages.find_one({"_id": msg_id}, {"_id": 1})
        if existing is None:
            seq = await self._next_seq(conversation_id)
            if seq is None:
                raise NotFound("conversation not found")
            doc: Doc = {
                "_id": msg_id,
                "conversation_id": conversation_id,
                "user_id": user_id,
                "seq": seq,
                "role": "user",
                "content": text,
                "status": "complete",
                "provider": provider,
                "job_id": job_id,
                "created_at": now(),
            }
            if image is not None:
                doc["image"] = {"mime": image.mime, "data_base64": image.data_base64}
            try:
                await self.messages.insert_one(doc)
            except DuplicateKeyError:
                pass  # the same turn begun twice (a retried request): one message
        context = await self.context(conversation_id)
        return BegunTurn(conversation_id, msg_id, created, context)

    async def context(self, conversation_id: str) -> list[ContextMessage]:
        cursor = (
            self.messages.find(
                {"conversation_id": conversation_id, "content": {"$ne": ""}},
                {"role": 1, "content": 1, "image": 1},
            )
            .sort("seq", DESCENDING)
            .limit(self.context_messages)
        )
        docs = await cursor.to_list()
        docs.reverse()
        out: list[ContextMessage] = []
        for d in docs:
            img = d.get("image")
            out.append(
                ContextMessage(
                    role=d["role"],
                    content=d["content"],
                    image=ImageRef(**img) if img else None,
                )
            )
        return out

    async def save_result(self, result: TurnResult) -> str | None:
        """Store a turn's reply once; None when the conversation is gone."""
        msg_id = reply_message_id(result.job_id)
        if await self.messages.find_one({"_id": msg_id}, {"_id": 1}) is not None:
            return msg_id
        seq = await self._next_seq(result.conversation_id)
        if seq is None:
            return None  # deleted mid-stream: do not bring it back
        doc: Doc = {
            "_id": msg_id,
            "conversation_id": result.conversation_id,
            "user_id": result.user_id,
            "seq": seq,
            "role": "assistant",
            "content": result.reply,
            "status": result.status.value,
            "provider": result.provider,
            "model": result.model,
            "reasoning": result.reasoning or None,
            "usage": result.usage.model_dump() if result.usage else None,
            "job_id": result.job_id,
            "error": result.error,
            "created_at": result.finished_at,
        }
        with contextlib.suppress(DuplicateKeyError):
            await self.messages.insert_one(doc)
        return msg_id


def open_client(url: str) -> AsyncMongoClient[Doc]:
    return AsyncMongoClient(url, w="majority", tz_aware=True, serverSelectionTimeoutMS=5000)
