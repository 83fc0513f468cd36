"""History's internal API for conversations, messages, folders and user settings.

Called only by the gateway, which has authenticated the user and passes the user id
in `X-Parley-User`. Every input is checked again here (types first: an id is a string,
never an object, so nothing a client sends can become a MongoDB operator), and every
answer is already in the public shape: the gateway relays it.

Cursors are opaque to clients: base64url (no padding) of `c1:<updated_at ms>:<id>`
for conversations and `m1:<seq>` for messages. docs/history-schema.md explains them.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from aiohttp import web
from parley_common.topology import PROVIDERS
from redis.exceptions import RedisError

from parley_history.context import REGISTRY, STORE, caller
from parley_history.errors import BadRequest
from parley_history.store import UNSET, ConversationKey, Doc, Unset

log = structlog.get_logger("parley_history.handlers")

PREFIX = "/internal/v1"
MAX_LIMIT = 100
DEFAULT_LIMIT = 50
MAX_ID_CHARS = 256
MAX_TITLE_CHARS = 200
MAX_FOLDER_NAME_CHARS = 100
MAX_CURSOR_CHARS = 512
_CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- rendering ------------------------------------------------------------------
def iso(ts: datetime) -> str:
    """UTC, millisecond precision (what MongoDB stores), `Z` suffix."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def render_conversation(doc: Doc) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "user_id": doc["user_id"],
        "channel": doc["channel"],
        "created_at": iso(doc["created_at"]),
        "updated_at": iso(doc["updated_at"]),
        "folder_id": doc.get("folder_id"),
        "title": doc.get("title") or "",
    }


def render_message(doc: Doc) -> dict[str, Any]:
    """The reference's fields, then the extensions that are known for this message."""
    out: dict[str, Any] = {
        "id": doc["_id"],
        "role": doc["role"],
        "content": doc["content"],
        "created_at": iso(doc["created_at"]),
        "status": doc.get("status") or "complete",
    }
    for field in ("provider", "model", "reasoning"):
        if doc.get(field):
            out[field] = doc[field]
    usage = doc.get("usage")
    if usage:
        out["usage"] = {
            "input_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"),
        }
    sources = doc.get("sources")
    if isinstance(sources, list):
        out["sources"] = [
            {"url": str(s.get("url", "")), "title": str(s.get("title", ""))}
            for s in sources
            if isinstance(s, dict)
        ]
    return out


def render_folder(doc: Doc) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "user_id": doc["user_id"],
        "name": doc["name"],
        "created_at": iso(doc["created_at"]),
        "updated_at": iso(doc["updated_at"]),
    }


def render_settings(doc: Doc) -> dict[str, Any]:
    return {"default_provider": doc.get("default_provider")}


# --- cursors ----------------------------------------------------------------------
def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _unb64(cursor: str) -> str:
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError("too long")
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()


def conversation_cursor(doc: Doc) -> str:
    ts: datetime = doc["updated_at"]
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ms = (ts - _EPOCH) // timedelta(milliseconds=1)
    return _b64(f"c1:{ms}:{doc['_id']}")


def parse_conversation_cursor(cursor: str) -> ConversationKey:
    try:
        tag, ms, conversation_id = _unb64(cursor).split(":", 2)
        if tag != "c1" or not ms.lstrip("-").isdigit() or not conversation_id:
            raise ValueError(tag)
        return ConversationKey(_EPOCH + timedelta(milliseconds=int(ms)), conversation_id)
    except (ValueError, binascii.Error, OverflowError) as exc:
        raise BadRequest("before: not a valid cursor") from exc


def message_cursor(doc: Doc) -> str:
    return _b64(f"m1:{int(doc['seq'])}")


def parse_message_cursor(cursor: str) -> int:
    try:
        tag, seq = _unb64(cursor).split(":")
        if tag != "m1" or not seq.isdigit() or len(seq) > 18:
            raise ValueError(tag)
        return int(seq)
    except (ValueError, binascii.Error) as exc:
        raise BadRequest("before: not a valid cursor") from exc


# --- input ------------------------------------------------------------------------
def _has_control(value: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _one_query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"{name}: must be given at most once")
    return values[0] if values else None


def query_limit(request: web.Request) -> int:
    raw = _one_query(request, "limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit: must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def checked_id(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field}: must be a string")
    if not value or len(value) > MAX_ID_CHARS or _has_control(value) or value != value.strip():
        raise BadRequest(f"{field}: must be 1 to {MAX_ID_CHARS} characters, no control characters")
    return value


def _text(value: object, field: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field}: must be a string")
    text = value.strip()
    if not text or len(text) > max_chars or _has_control(text):
        raise BadRequest(f"{field}: must be 1 to {max_chars} characters, no control characters")
    return text


async def json_body(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("body: not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    for name in body:
        if name not in allowed:
            options = ", ".join(sorted(allowed))
            raise BadRequest(f"{str(name)[:40]}: unknown field; allowed: {options}")
    return body


# --- conversations ------------------------------------------------------------------
async def list_conversations(request: web.Request) -> web.Response:
    user = caller(request)
    channel = _one_query(request, "channel") or "web"
    if not _CHANNEL_RE.match(channel):
        raise BadRequest("channel: must match [a-z0-9][a-z0-9_-]{0,31}")
    limit = query_limit(request)
    before_raw = _one_query(request, "before")
    before = parse_conversation_cursor(before_raw) if before_raw else None
    folder_raw = _one_query(request, "folder_id")
    folder_id = checked_id(folder_raw, "folder_id") if folder_raw is not None else None
    page = await request.app[STORE].list_conversations(
        user, channel=channel, limit=limit, before=before, folder_id=folder_id
    )
    # The page is newest first, so the next page starts below its last entry.
    more = page.more and bool(page.docs)
    return web.json_response(
        {
            "conversations": [render_conversation(d) for d in page.docs],
            "next_before": conversation_cursor(page.docs[-1]) if more else None,
        }
    )


def _conversation_id(request: web.Request) -> str:
    conversation_id = checked_id(request.match_info["conversation_id"], "conversation_id")
    structlog.contextvars.bind_contextvars(conversation_id=conversation_id)
    return conversation_id


async def get_conversation(request: web.Request) -> web.Response:
    user = caller(request)
    doc = await request.app[STORE].owned_conversation(user, _conversation_id(request))
    return web.json_response(render_conversation(doc))


async def update_conversation(request: web.Request) -> web.Response:
    user = caller(request)
    conversation_id = _conversation_id(request)
    body = await json_body(request, frozenset({"title", "folder_id"}))
    if not body:
        raise BadRequest("body: give title and/or folder_id")
    title: str | Unset = UNSET
    folder_id: str | Unset | None = UNSET
    if "title" in body:
        title = _text(body["title"], "title", MAX_TITLE_CHARS)
    if "folder_id" in body:
        raw = body["folder_id"]
        folder_id = None if raw is None else checked_id(raw, "folder_id")
    doc = await request.app[STORE].update_conversation(
        user, conversation_id, title=title, folder_id=folder_id
    )
    log.info("conversation.updated", conversation_id=conversation_id, fields=sorted(body))
    return web.json_response(render_conversation(doc))


async def delete_conversation(request: web.Request) -> web.Response:
    user = caller(request)
    conversation_id = _conversation_id(request)
    deleted = await request.app[STORE].delete_conversation(user, conversation_id)
    log.info("conversation.deleted", conversation_id=conversation_id, messages=deleted)
    try:
        # A reply still being generated for it then has nowhere to go, and is known not
        # to be waiting for its conversation to be stored (consumer.py).
        await request.app[REGISTRY].mark_deleted(conversation_id)
    except RedisError:
        log.warning("conversation.deleted_unmarked", conversation_id=conversation_id)
    return web.json_response({"ok": True})


async def truncate_conversation(request: web.Request) -> web.Response:
    user = caller(request)
    conversation_id = _conversation_id(request)
    body = await json_body(request, frozenset({"keep_count"}))
    keep_count = body.get("keep_count", 0)
    if isinstance(keep_count, bool) or not isinstance(keep_count, int) or keep_count < 0:
        raise BadRequest("keep_count: must be a non-negative integer")
    deleted = await request.app[STORE].truncate(user, conversation_id, keep_count)
    log.info(
        "conversation.truncated",
        conversation_id=conversation_id,
        keep_count=keep_count,
        deleted=deleted,
    )
    return web.json_response(
        {
            "ok": True,
            "conversation_id": conversation_id,
            "keep_count": keep_count,
            "deleted": deleted,
        }
    )


async def list_messages(request: web.Request) -> web.Response:
    user = caller(request)
    conversation_id = _conversation_id(request)
    limit = query_limit(request)
    before_raw = _one_query(request, "before")
    before = parse_message_cursor(before_raw) if before_raw else None
    page = await request.app[STORE].list_messages(
        user, conversation_id, limit=limit, before_seq=before
    )
    # The page is oldest first, so the next (older) page starts below its first entry.
    more = page.more and bool(page.docs)
    return web.json_response(
        {
            "conversation_id": conversation_id,
            "messages": [render_message(d) for d in page.docs],
            "next_before": message_cursor(page.docs[0]) if more else None,
        }
    )


# --- folders ------------------------------------------------------------------------
async def list_folders(request: web.Request) -> web.Response:
    user = caller(request)
    docs = await request.app[STORE].list_folders(user)
    return web.json_response({"folders": [render_folder(d) for d in docs]})


async def create_folder(request: web.Request) -> web.Response:
    user = caller(request)
    body = await json_body(request, frozenset({"name"}))
    if "name" not in body:
        raise BadRequest("name: is required")
    name = _text(body["name"], "name", MAX_FOLDER_NAME_CHARS)
    doc = await request.app[STORE].create_folder(user, name)
    log.info("folder.created", folder_id=doc["_id"])
    return web.json_response(render_folder(doc), status=201)


def _folder_id(request: web.Request) -> str:
    return checked_id(request.match_info["folder_id"], "folder_id")


async def rename_folder(request: web.Request) -> web.Response:
    user = caller(request)
    folder_id = _folder_id(request)
    body = await json_body(request, frozenset({"name"}))
    if "name" not in body:
        raise BadRequest("name: is required")
    name = _text(body["name"], "name", MAX_FOLDER_NAME_CHARS)
    doc = await request.app[STORE].rename_folder(user, folder_id, name)
    return web.json_response(render_folder(doc))


async def delete_folder(request: web.Request) -> web.Response:
    user = caller(request)
    folder_id = _folder_id(request)
    unfiled = await request.app[STORE].delete_folder(user, folder_id)
    log.info("folder.deleted", folder_id=folder_id, unfiled=unfiled)
    return web.json_response({"ok": True})


# --- user settings ------------------------------------------------------------------
async def get_settings(request: web.Request) -> web.Response:
    user = caller(request)
    return web.json_response(render_settings(await request.app[STORE].get_settings(user)))


async def put_settings(request: web.Request) -> web.Response:
    user = caller(request)
    body = await json_body(request, frozenset({"default_provider"}))
    provider = body.get("default_provider")
    if provider is not None and (not isinstance(provider, str) or provider not in PROVIDERS):
        raise BadRequest(f"default_provider: must be null or one of {', '.join(PROVIDERS)}")
    doc = await request.app[STORE].put_settings(user, default_provider=provider)
    return web.json_response(render_settings(doc))


def add_routes(app: web.Application) -> None:
    r = app.router
    # Any character but `/` (aiohttp's default also refuses `{` and `}`, which ids may hold).
    conv = f"{PREFIX}/conversations/{{conversation_id:[^/]+}}"
    r.add_get(f"{PREFIX}/conversations", list_conversations)
    r.add_get(conv, get_conversation)
    r.add_patch(conv, update_conversation)
    r.add_delete(conv, delete_conversation)
    r.add_post(f"{conv}/truncate", truncate_conversation)
    r.add_get(f"{conv}/messages", list_messages)
    r.add_get(f"{PREFIX}/folders", list_folders)
    r.add_post(f"{PREFIX}/folders", create_folder)
    r.add_patch(f"{PREFIX}/folders/{{folder_id:[^/]+}}", rename_folder)
    r.add_delete(f"{PREFIX}/folders/{{folder_id:[^/]+}}", delete_folder)
    r.add_get(f"{PREFIX}/settings", get_settings)
    r.add_put(f"{PREFIX}/settings", put_settings)
