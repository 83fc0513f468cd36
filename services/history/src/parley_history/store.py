"""Conversations, messages, folders and user settings in MongoDB (PyMongo's async API).

Collections (docs/history-schema.md has the full schema and the reasons):
- `conversations`: `_id` (the conversation id), `user_id`, `channel`, `title`,
  `folder_id`, `created_at`, `updated_at`, `next_seq`.
- `messages`: `_id` (message id), `conversation_id`, `user_id`, `seq`, `role`,
  `content`, `status`, `provider`, `model`, `reasoning`, `usage`, `sources`, `job_id`,
  `image`, `error`, `created_at`.
- `folders`: `_id` (`fld-<random>`), `user_id`, `name`, `created_at`, `updated_at`.
- `user_settings`: `_id` (the user id), `default_provider`, `updated_at`.

Messages are ordered by `seq`, taken from the conversation's `next_seq` counter
with one atomic `$inc`, so concurrent appends keep a total order. Message ids are
derived from the job id (`msg-<job_id>-u` / `-a`), which makes both writes of a
turn idempotent: a redelivered turn event meets a duplicate key, not a second copy.

Ownership is always decided by the stored `user_id`, never by parsing an id.

Every public write is timed (`parley_history_write_seconds{op}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from parley_common.ids import new_conversation_id, reply_message_id, user_message_id
from parley_common.schemas import ContextMessage, ImageRef, Source, TurnResult, TurnStatus, Usage
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from parley_history.errors import Conflict, Forbidden, NotFound, TurnInProgress
from parley_history.metrics import timed_write

Doc = dict[str, Any]

TITLE_MAX = 80
# A user's folders are listed whole (no cursor), so their number is bounded.
MAX_FOLDERS = 200
# `skip` beyond this is the same as "keep everything"; keeps the value inside int64.
_SKIP_MAX = 2**62
# Index names of earlier releases that a newer index replaces (dropped at start-up).
_RETIRED_INDEXES = {"conversations": ("by_user_channel_updated",)}
# How often begin_turn tries again when its update matched nothing but the read after it
# finds the conversation free (a lock released, or a conversation created, in between).
_BEGIN_ATTEMPTS = 3
# Projection of the conversation fields the API shows.
_CONVERSATION_FIELDS = {
    "user_id": 1,
    "channel": 1,
    "title": 1,
    "folder_id": 1,
    "created_at": 1,
    "updated_at": 1,
}
_MESSAGE_FIELDS = {
    "role": 1,
    "content": 1,
    "created_at": 1,
    "status": 1,
    "provider": 1,
    "model": 1,
    "reasoning": 1,
    "usage": 1,
    "sources": 1,
    "seq": 1,
}


def _as_result(doc: Doc, incoming: TurnResult) -> TurnResult:
    """A stored reply as the turn result it was saved from."""
    usage = doc.get("usage")
    sources = doc.get("sources")
    return incoming.model_copy(
        update={
            "provider": doc.get("provider") or incoming.provider,
            "model": doc.get("model"),
            "status": TurnStatus(doc.get("status", "complete")),
            "reply": doc.get("content", ""),
            "reasoning": doc.get("reasoning") or "",
            "usage": Usage(**usage) if usage else None,
            "error": doc.get("error"),
            "error_code": doc.get("error_code"),
            "sources": [Source(**s) for s in sources] if sources is not None else None,
        }
    )


def now() -> datetime:
    return datetime.now(UTC)


def new_folder_id() -> str:
    return f"fld-{secrets.token_urlsafe(12)}"


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_MAX else line[: TITLE_MAX - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class BegunTurn:
    conversation_id: str
    user_message_id: str
    created: bool
    context: list[ContextMessage]
    # A staged begin: the user message's insert (a majority write, which also makes
    # the turn's lock durable), still to be awaited; None when it is stored already.
    stored: Awaitable[None] | None = None


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """A position in the conversation list (newest-updated first, then by id)."""

    updated_at: datetime
    conversation_id: str


@dataclass(frozen=True, slots=True)
class Page:
    """Up to `limit` documents and whether more follow them."""

    docs: list[Doc]
    more: bool


@dataclass(frozen=True, slots=True)
class _NewTurn:
    """What begin_turn was asked to store."""

    user_id: str
    channel: str
    text: str
    image: ImageRef | None
    provider: str
    job_id: str
    lock_seconds: int
    exclusive: bool


def _lock(turn: _NewTurn, ts: datetime) -> Doc:
    """A conversation's `active_job`: held by this turn until its result is saved, or
    until it expires should that result never come."""
    return {"job_id": turn.job_id, "until": ts + timedelta(seconds=turn.lock_seconds)}


def _lock_holder(conv: Doc, ts: datetime) -> str | None:
    """The job whose lock on the conversation is still in force, if any."""
    lock = conv.get("active_job")
    if not lock or not isinstance(lock.get("until"), datetime):
        return None
    until: datetime = lock["until"]
    if until.tzinfo is None:  # a client without tz_aware reads UTC as naive
        until = until.replace(tzinfo=UTC)
    return None if until < ts else str(lock.get("job_id", ""))


def _turn_in_progress(active: str) -> TurnInProgress:
    return TurnInProgress(
        f"a reply is still being generated in this conversation (job {active}); "
        "wait for it, resume it, or cancel it",
        active_job_id=active,
    )


def _with_message(older: list[Doc], turn: _NewTurn) -> list[ContextMessage]:
    """The context: the messages before the turn's (newest first, as read), oldest
    first, then the turn's own with its image."""
    context = [ContextMessage(role=d["role"], content=d["content"]) for d in reversed(older)]
    context.append(ContextMessage(role="user", content=turn.text, image=turn.image))
    return context


async def _outcome(write: Awaitable[object]) -> BaseException | None:
    """None when the write succeeded, else what it raised."""
    try:
        await write
    except Exception as exc:
        return exc
    return None


class Unset:
    """Marks a field that a partial update leaves as it is."""


UNSET = Unset()


class Store:
    def __init__(self, db: AsyncDatabase[Doc], context_messages: int = 40) -> None:
        self.db = db
        self.conversations = db["conversations"]
        # For the first write of a pair whose second is a majority write on the same
        # primary, issued after it: a majority-committed write commits everything
        # before it in the oplog, so the pair is durable when the second is
        # acknowledged, for one journal flush instead of two (MongoDB's CPU per turn;
        # docs/benchmarks.md). Nothing is acknowledged to anyone between the two.
        self.conversations_then = self.conversations.with_options(write_concern=WriteConcern(w=1))
        self.messages = db["messages"]
        self.folders = db["folders"]
        self.settings = db["user_settings"]
        self.context_messages = context_messages

    async def ensure_indexes(self) -> None:
        """Idempotent: create_index with the same spec is a no-op; retired indexes go."""
        await self.conversations.create_index(
            [
                ("user_id", ASCENDING),
                ("channel", ASCENDING),
                ("updated_at", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="by_user_channel_updated_id",
        )
        await self.conversations.create_index(
            [
                ("user_id", ASCENDING),
                ("folder_id", ASCENDING),
                ("updated_at", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="by_user_folder_updated_id",
        )
        await self.messages.create_index(
            [("conversation_id", ASCENDING), ("seq", ASCENDING)],
            name="by_conversation_seq",
            unique=True,
        )
        await self.messages.create_index([("job_id", ASCENDING)], name="by_job")
        await self.folders.create_index(
            [("user_id", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)],
            name="by_user_created",
        )
        for collection, names in _RETIRED_INDEXES.items():
            for name in names:
                try:
                    await self.db[collection].drop_index(name)
                except OperationFailure as exc:
                    if exc.code not in (26, 27):  # NamespaceNotFound, IndexNotFound: gone
                        raise

    async def owned_conversation(self, user_id: str, conversation_id: str) -> Doc:
        conv = await self.conversations.find_one({"_id": conversation_id})
        if conv is None:
            raise NotFound("conversation not found")
        if conv["user_id"] != user_id:
            raise Forbidden("conversation belongs to another user")
        return conv

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

    @timed_write("begin_turn")
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
        lock_seconds: int = 900,
        exclusive: bool = True,
        new_conversation_id: str | None = None,
        staged: bool = False,
    ) -> BegunTurn:
        """Store a turn's user message and return the context for the provider.

        Without a `conversation_id` the turn starts a new conversation, named
        `new_conversation_id` when the caller chose it (the gateway does, to queue the
        job while this runs; it must be in the user's namespace) or here otherwise.

        `staged` (an existing or client-named conversation): the lock, the `seq` and
        the context are taken, and the message's insert is left in `stored`, for the
        caller to await once it has answered (history's begin-turn answers with the
        context, then stores the message while the gateway queues the job; ADR 10).

        `exclusive` (the chat path) also takes the conversation's one-turn lock;
        without it this is a plain append, still totally ordered by `seq`.

        Round trips: a new conversation is two (the conversation, created already
        locked and counting its first message, acknowledged applied; then that
        message, a majority write that makes both durable); an existing one is two
        (one update checks the owner, takes the lock and the message's `seq`,
        acknowledged applied (`conversations_then`); then the message is inserted, a
        majority write that makes both durable, while the older context is read, or,
        staged, after it)."""
        turn = _NewTurn(user_id, channel, text, image, provider, job_id, lock_seconds, exclusive)
        if conversation_id is None:
            return await self._begin_in_new_conversation(turn, new_conversation_id)
        active = ""
        for _ in range(_BEGIN_ATTEMPTS):
            seq = await self._take_turn(turn, conversation_id)
            if seq is not None:
                return await self._store_user_message(
                    turn, conversation_id, seq, created=False, staged=staged
                )
            # Matched nothing: tell apart why, with the same answers as ever.
            conv = await self.conversations.find_one(
                {"_id": conversation_id}, {"user_id": 1, "active_job": 1}
            )
            if conv is None:
                # A client may name a new conversation only inside its own namespace.
                if not conversation_id.startswith(f"{user_id}:"):
                    raise NotFound("conversation not found")
                if await self._create_conversation(turn, conversation_id):
                    return await self._store_user_message(
                        turn, conversation_id, 1, created=True, staged=staged
                    )
                continue  # a concurrent request created it first: take a turn in it
            if conv["user_id"] != user_id:
                raise Forbidden("conversation belongs to another user")
            holder = _lock_holder(conv, now())
            if exclusive and holder is not None and holder != job_id:
                raise _turn_in_progress(holder)
            # Free again (the lock was released, or expired, between the update and the
            # read): try again.
            active = holder or ""
        if not exclusive:
            raise NotFound("conversation not found")
        raise _turn_in_progress(active)

    def _conversation_doc(self, turn: _NewTurn, conversation_id: str, ts: datetime) -> Doc:
        """A new conversation, already counting its first message and, for an
        exclusive turn, already locked to it."""
        doc: Doc = {
            "_id": conversation_id,
            "user_id": turn.user_id,
            "channel": turn.channel,
            "title": title_from(turn.text),
            "folder_id": None,
            "created_at": ts,
            "updated_at": ts,
            "next_seq": 1,
        }
        if turn.exclusive:
            doc["active_job"] = _lock(turn, ts)
        return doc

    def _user_message_doc(
        self, turn: _NewTurn, conversation_id: str, seq: int, ts: datetime
    ) -> Doc:
        doc: Doc = {
            "_id": user_message_id(turn.job_id),
            "conversation_id": conversation_id,
            "user_id": turn.user_id,
            "seq": seq,
            "role": "user",
            "content": turn.text,
            "status": "complete",
            "provider": turn.provider,
            "job_id": turn.job_id,
            "created_at": ts,
        }
        if turn.image is not None:
            doc["image"] = {"mime": turn.image.mime, "data_base64": turn.image.data_base64}
        return doc

    async def _begin_in_new_conversation(self, turn: _NewTurn, chosen: str | None) -> BegunTurn:
        """A fresh id, which no other request can know yet (random, here or chosen by
        the gateway): the conversation is inserted, then its first message, and the
        context is the message.

        The conversation is acknowledged applied (`conversations_then`) and the message,
        a majority write after it on the same primary, makes both durable: one journal
        flush. A new conversation's job is queued before history is asked (ADR 10), so
        these writes are not on the way to the first token."""
        conversation_id = chosen or new_conversation_id(turn.user_id, turn.channel)
        msg_id = user_message_id(turn.job_id)
        ts = now()
        conv_done = await _outcome(
            self.conversations_then.insert_one(self._conversation_doc(turn, conversation_id, ts))
        )
        if isinstance(conv_done, DuplicateKeyError):
            # There already: this turn's own, from an earlier attempt of the same
            # request (its message tells), or not for this turn to take.
            existing = await self.conversations.find_one(
                {"_id": conversation_id}, {"user_id": 1, "active_job": 1}
            )
            ours = (
                existing is not None
                and existing["user_id"] == turn.user_id
                and (existing.get("active_job") or {}).get("job_id") == turn.job_id
            )
            if not ours:
                raise Conflict("new_conversation_id: a conversation with this id exists")
        elif conv_done is not None:
            raise conv_done
        msg_done = await _outcome(
            self.messages.insert_one(self._user_message_doc(turn, conversation_id, 1, ts))
        )
        if isinstance(msg_done, DuplicateKeyError):
            # The same turn begun twice (a retried request): the first one's
            # conversation and message stand, and nothing new is stored.
            if conv_done is None:
                await self._undo_conversation(conversation_id)
            return await self._begun_earlier(turn)
        if msg_done is not None:
            # Not a conversation without its message (best effort: MongoDB may be what
            # failed).
            await self._undo_conversation(conversation_id)
            raise msg_done
        context = [ContextMessage(role="user", content=turn.text, image=turn.image)]
        return BegunTurn(conversation_id, msg_id, True, context if turn.text else [])

    async def _undo_conversation(self, conversation_id: str) -> None:
        with contextlib.suppress(PyMongoError):
            await self.conversations.delete_one({"_id": conversation_id})

    async def _begun_earlier(self, turn: _NewTurn) -> BegunTurn:
        msg_id = user_message_id(turn.job_id)
        earlier = await self.messages.find_one({"_id": msg_id}, {"conversation_id": 1})
        if earlier is None:
            raise NotFound("conversation not found")  # deleted meanwhile
        conversation_id = str(earlier["conversation_id"])
        await self.owned_conversation(turn.user_id, conversation_id)
        return BegunTurn(conversation_id, msg_id, False, await self.context(conversation_id))

    async def _create_conversation(self, turn: _NewTurn, conversation_id: str) -> bool:
        """A client-chosen id: created first, and only then given its message, since a
        concurrent request for the same id may create it instead."""
        try:
            await self.conversations.insert_one(
                self._conversation_doc(turn, conversation_id, now())
            )
        except DuplicateKeyError:
            return False
        return True

    async def _take_turn(self, turn: _NewTurn, conversation_id: str) -> int | None:
        """One update for the owner check, the one-turn lock and the user message's
        `seq`; None when it matched nothing (unknown, another user's, or locked)."""
        ts = now()
        query: Doc = {"_id": conversation_id, "user_id": turn.user_id}
        update: Doc = {"$inc": {"next_seq": 1}, "$set": {"updated_at": ts}}
        if turn.exclusive:
            # One turn at a time per conversation, across every gateway: the lock is
            # the conversation's `active_job`, released when the turn's result is
            # saved, and expiring on its own should that result never come.
            query["$or"] = [
                {"active_job": None},
                {"active_job.until": {"$lt": ts}},
                {"active_job.job_id": turn.job_id},
            ]
            update["$set"]["active_job"] = _lock(turn, ts)
        conv = await self.conversations_then.find_one_and_update(
            query,
            update,
            projection={"next_seq": 1, "_id": 0},
            return_document=ReturnDocument.AFTER,
        )
        return None if conv is None else int(conv["next_seq"])

    async def _store_user_message(
        self, turn: _NewTurn, conversation_id: str, seq: int, *, created: bool, staged: bool
    ) -> BegunTurn:
        """Insert the message while reading the context before it (staged: read the
        context, and leave the insert to the caller): the newest message is the one
        being inserted, and its image is the request's."""
        msg_id = user_message_id(turn.job_id)
        if staged and turn.text:
            older = await self._context_before(conversation_id, seq, turn.text)
            return BegunTurn(
                conversation_id,
                msg_id,
                created,
                _with_message(older, turn),
                self._insert_user_message(turn, conversation_id, seq),
            )
        inserted, docs = await asyncio.gather(
            self.messages.insert_one(self._user_message_doc(turn, conversation_id, seq, now())),
            self._context_before(conversation_id, seq, turn.text),
            return_exceptions=True,
        )
        if isinstance(inserted, DuplicateKeyError) or (
            not isinstance(inserted, BaseException) and not turn.text
        ):
            # The same turn begun twice (a retried request): one message, in the
            # place the first attempt gave it. An empty text is no context of its own.
            # Either way the context is read as stored.
            return BegunTurn(conversation_id, msg_id, created, await self.context(conversation_id))
        if isinstance(inserted, BaseException):
            raise inserted
        if isinstance(docs, BaseException):
            raise docs
        return BegunTurn(conversation_id, msg_id, created, _with_message(docs, turn))

    async def _insert_user_message(self, turn: _NewTurn, conversation_id: str, seq: int) -> None:
        """A staged begin's insert. A retried begin finds its message stored already:
        one message, in the place the first attempt gave it."""
        with contextlib.suppress(DuplicateKeyError):
            await self.messages.insert_one(
                self._user_message_doc(turn, conversation_id, seq, now())
            )

    async def _context_before(self, conversation_id: str, seq: int, text: str) -> list[Doc]:
        """The newest messages below `seq` (newest first) that, with the message at
        `seq`, make up the context; no read when there can be none."""
        older = self.context_messages - 1
        if seq <= 1 or older <= 0 or not text:
            return []
        cursor = (
            self.messages.find(
                {"conversation_id": conversation_id, "seq": {"$lt": seq}, "content": {"$ne": ""}},
                {"role": 1, "content": 1, "_id": 0},
            )
            .sort("seq", DESCENDING)
            .limit(older)
        )
        return await cursor.to_list()

    async def release_turn(self, conversation_id: str, job_id: str) -> None:
        await self.conversations.update_one(
            {"_id": conversation_id, "active_job.job_id": job_id},
            {"$set": {"active_job": None}},
        )

    async def context(self, conversation_id: str) -> list[ContextMessage]:
        """The newest messages, oldest first, for the provider. Only the newest
        message's image goes with them: earlier images stay saved but would make
        every later turn carry (and pay for) them, so they are not even read."""
        cursor = (
            self.messages.find(
                {"conversation_id": conversation_id, "content": {"$ne": ""}},
                {"role": 1, "content": 1},
            )
            .sort("seq", DESCENDING)
            .limit(self.context_messages)
        )
        docs = await cursor.to_list()
        newest_image = None
        if docs:
            with_image = await self.messages.find_one({"_id": docs[0]["_id"]}, {"image": 1})
            newest_image = (with_image or {}).get("image")
        docs.reverse()
        out = [ContextMessage(role=d["role"], content=d["content"]) for d in docs]
        if out and newest_image:
            out[-1] = out[-1].model_copy(update={"image": ImageRef(**newest_image)})
        return out

    @timed_write("save_result")
    async def save_result(self, result: TurnResult) -> tuple[str, TurnResult] | None:
        """Store a turn's reply once; None when the conversation is gone.

        Returns the message id and the result *as stored*: when an earlier delivery
        of the same turn was saved first, that one, so whoever announces the turn
        announces what history holds.

        While the turn still holds its conversation's lock (the usual case), one update
        releases the lock and takes the reply's `seq`, and the insert follows."""
        msg_id = reply_message_id(result.job_id)
        taken = await self.conversations_then.find_one_and_update(
            {"_id": result.conversation_id, "active_job.job_id": result.job_id},
            {"$set": {"active_job": None, "updated_at": now()}, "$inc": {"next_seq": 1}},
            projection={"next_seq": 1, "_id": 0},
            return_document=ReturnDocument.AFTER,
        )
        if taken is not None:
            seq = int(taken["next_seq"])
        else:
            # The turn holds no lock here: a redelivered result (saved already, or its
            # first save stopped between its two writes), a lock that expired and was
            # taken by a later turn, a turn begun without one, or a deleted conversation.
            stored = await self.messages.find_one({"_id": msg_id})
            if stored is not None:
                return msg_id, _as_result(stored, result)
            next_seq = await self._next_seq(result.conversation_id)
            if next_seq is None:
                return None  # deleted mid-stream: do not bring it back
            seq = next_seq
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
            "error_code": result.error_code,
            "created_at": result.finished_at,
        }
        if result.sources is not None:
            # The pages a `web: true` reply drew on.
            doc["sources"] = [s.model_dump() for s in result.sources]
        try:
            await self.messages.insert_one(doc)
        except DuplicateKeyError:  # a concurrent delivery of the same turn won
            stored = await self.messages.find_one({"_id": msg_id})
            if stored is not None:
                return msg_id, _as_result(stored, result)
        return msg_id, result

    # --- conversations ------------------------------------------------------
    async def list_conversations(
        self,
        user_id: str,
        *,
        channel: str,
        limit: int,
        before: ConversationKey | None = None,
        folder_id: str | None = None,
    ) -> Page:
        """Newest-updated first (ties by id, descending), strictly after `before`."""
        query: Doc = {"user_id": user_id, "channel": channel}
        if folder_id is not None:
            query["folder_id"] = folder_id
        if before is not None:
            query["$or"] = [
                {"updated_at": {"$lt": before.updated_at}},
                {"updated_at": before.updated_at, "_id": {"$lt": before.conversation_id}},
            ]
        cursor = (
            self.conversations.find(query, _CONVERSATION_FIELDS)
            .sort([("updated_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
        )
        docs = await cursor.to_list()
        return Page(docs[:limit], len(docs) > limit)

    @timed_write("update_conversation")
    async def update_conversation(
        self,
        user_id: str,
        conversation_id: str,
        *,
        title: str | Unset = UNSET,
        folder_id: str | Unset | None = UNSET,
    ) -> Doc:
        """Rename and/or move into (a folder id) or out of (None) a folder.

        Neither changes `updated_at`: the list stays ordered by conversation activity.
        """
        await self.owned_conversation(user_id, conversation_id)
        changes: Doc = {}
        if not isinstance(title, Unset):
            changes["title"] = title
        if not isinstance(folder_id, Unset):
            if folder_id is not None:
                await self._owned_folder(user_id, folder_id)
            changes["folder_id"] = folder_id
        if changes:
            await self.conversations.update_one(
                {"_id": conversation_id, "user_id": user_id}, {"$set": changes}
            )
        if isinstance(folder_id, str) and await self.folders.find_one({"_id": folder_id}) is None:
            # The folder was deleted between the check and the move: its delete unfiles
            # what it finds, and this unfiles what it could not yet find.
            await self.conversations.update_one(
                {"_id": conversation_id, "folder_id": folder_id}, {"$set": {"folder_id": None}}
            )
        return await self.owned_conversation(user_id, conversation_id)

    @timed_write("delete_conversation")
    async def delete_conversation(self, user_id: str, conversation_id: str) -> int:
        """Delete the conversation, then its messages (images are stored inside them).

        The conversation goes first: a reply still being generated then finds no
        `next_seq` to take and is not saved, so it cannot bring the conversation back.
        Returns the number of messages deleted.
        """
        await self.owned_conversation(user_id, conversation_id)
        gone = await self.conversations.delete_one({"_id": conversation_id, "user_id": user_id})
        if gone.deleted_count == 0:
            raise NotFound("conversation not found")  # deleted by a concurrent request
        result = await self.messages.delete_many({"conversation_id": conversation_id})
        return int(result.deleted_count)

    @timed_write("truncate")
    async def truncate(self, user_id: str, conversation_id: str, keep_count: int) -> int:
        """Keep the newest `keep_count` messages; return how many were deleted.

        Two bounded operations on the `(conversation_id, seq)` index: find the seq of
        the oldest message to keep (skipping `keep_count - 1` index keys from the newest),
        then delete everything below it. Messages appended meanwhile have higher seqs
        and are never touched.
        """
        await self.owned_conversation(user_id, conversation_id)
        query: Doc = {"conversation_id": conversation_id}
        if keep_count > 0:
            boundary = await (
                self.messages.find(query, {"seq": 1, "_id": 0})
                .sort("seq", DESCENDING)
                .skip(min(keep_count - 1, _SKIP_MAX))
                .limit(1)
                .to_list()
            )
            if not boundary:
                return 0  # fewer than keep_count messages: nothing to delete
            query["seq"] = {"$lt": boundary[0]["seq"]}
        result = await self.messages.delete_many(query)
        return int(result.deleted_count)

    # --- messages -------------------------------------------------------------
    async def list_messages(
        self, user_id: str, conversation_id: str, *, limit: int, before_seq: int | None = None
    ) -> Page:
        """The newest `limit` messages below `before_seq`, oldest first."""
        await self.owned_conversation(user_id, conversation_id)
        query: Doc = {"conversation_id": conversation_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        docs = await (
            self.messages.find(query, _MESSAGE_FIELDS)
            .sort("seq", DESCENDING)
            .limit(limit + 1)
            .to_list()
        )
        more = len(docs) > limit
        docs = docs[:limit]
        docs.reverse()
        return Page(docs, more)

    # --- folders --------------------------------------------------------------
    async def _owned_folder(self, user_id: str, folder_id: str) -> Doc:
        folder = await self.folders.find_one({"_id": folder_id})
        if folder is None:
            raise NotFound("folder not found")
        if folder["user_id"] != user_id:
            raise Forbidden("folder belongs to another user")
        return folder

    async def list_folders(self, user_id: str) -> list[Doc]:
        """Oldest first: the order in which the user created them."""
        cursor = self.folders.find({"user_id": user_id}).sort(
            [("created_at", ASCENDING), ("_id", ASCENDING)]
        )
        return await cursor.to_list(MAX_FOLDERS + 1)

    @timed_write("create_folder")
    async def create_folder(self, user_id: str, name: str) -> Doc:
        if await self.folders.count_documents({"user_id": user_id}) >= MAX_FOLDERS:
            raise Conflict(f"folders: at most {MAX_FOLDERS} per user")
        ts = now()
        doc: Doc = {
            "_id": new_folder_id(),
            "user_id": user_id,
            "name": name,
            "created_at": ts,
            "updated_at": ts,
        }
        await self.folders.insert_one(doc)
        return await self._owned_folder(user_id, doc["_id"])

    @timed_write("rename_folder")
    async def rename_folder(self, user_id: str, folder_id: str, name: str) -> Doc:
        await self._owned_folder(user_id, folder_id)
        folder = await self.folders.find_one_and_update(
            {"_id": folder_id, "user_id": user_id},
            {"$set": {"name": name, "updated_at": now()}},
            return_document=ReturnDocument.AFTER,
        )
        if folder is None:
            raise NotFound("folder not found")
        return folder

    @timed_write("delete_folder")
    async def delete_folder(self, user_id: str, folder_id: str) -> int:
        """Delete the folder, then unfile its conversations; returns how many were unfiled."""
        await self._owned_folder(user_id, folder_id)
        gone = await self.folders.delete_one({"_id": folder_id, "user_id": user_id})
        if gone.deleted_count == 0:
            raise NotFound("folder not found")
        result = await self.conversations.update_many(
            {"user_id": user_id, "folder_id": folder_id}, {"$set": {"folder_id": None}}
        )
        return int(result.modified_count)

    # --- user settings --------------------------------------------------------
    async def get_settings(self, user_id: str) -> Doc:
        doc = await self.settings.find_one({"_id": user_id})
        return doc or {"_id": user_id, "default_provider": None, "updated_at": None}

    @timed_write("put_settings")
    async def put_settings(self, user_id: str, *, default_provider: str | None) -> Doc:
        doc = await self.settings.find_one_and_update(
            {"_id": user_id},
            {"$set": {"default_provider": default_provider, "updated_at": now()}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # an upsert that returns the document after never gives None
            raise NotFound("settings not found")
        return doc


def open_client(url: str) -> AsyncMongoClient[Doc]:
    return AsyncMongoClient(url, w="majority", tz_aware=True, serverSelectionTimeoutMS=5000)
