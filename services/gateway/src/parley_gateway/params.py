"""Query parameters, path ids and bodies of the conversation, folder and settings endpoints.

Every check names the field (`limit: must be an integer from 1 to 100`). Values are
type-checked before anything else, so an object where an id belongs (`{"$ne": null}`)
is a 400 here and never reaches MongoDB; history checks again.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from aiohttp import web
from parley_common.topology import PROVIDERS

from parley_gateway.errors import BadRequest
from parley_gateway.validation import (
    CHANNEL_RE,
    has_control_chars,
    parse_json_object,
    validate_conversation_id,
)

MAX_LIMIT = 100
DEFAULT_LIMIT = 50
MAX_TITLE_CHARS = 200
MAX_FOLDER_NAME_CHARS = 100
MAX_CURSOR_CHARS = 512
_CURSOR_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def query_one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"{name}: must be given at most once")
    return values[0] if values else None


def limit(request: web.Request) -> int:
    raw = query_one(request, "limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit: must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def channel(request: web.Request) -> str:
    value = query_one(request, "channel")
    if value is None:
        return "web"
    if not CHANNEL_RE.match(value):
        raise BadRequest("channel: must match [a-z0-9][a-z0-9_-]{0,31}")
    return value


def before(request: web.Request) -> str | None:
    """An opaque cursor from an earlier page's `next_before`."""
    value = query_one(request, "before")
    if value is None or value == "":
        return None
    if len(value) > MAX_CURSOR_CHARS or not _CURSOR_RE.match(value):
        raise BadRequest("before: not a valid cursor")
    return value


def required_conversation_id(request: web.Request) -> str:
    value = query_one(request, "conversation_id")
    if value is None:
        raise BadRequest("conversation_id: is required")
    checked = validate_conversation_id(value)
    structlog.contextvars.bind_contextvars(conversation_id=checked)
    return checked


def optional_folder_id(request: web.Request) -> str | None:
    value = query_one(request, "folder_id")
    return None if value is None else validate_conversation_id(value, "folder_id")


def path_id(request: web.Request, name: str) -> str:
    """A path segment, already percent-decoded by aiohttp (`%3A` is `:`); a
    conversation's id is bound to the request's log lines."""
    checked = validate_conversation_id(request.match_info[name], name)
    if name == "conversation_id":
        structlog.contextvars.bind_contextvars(conversation_id=checked)
    return checked


async def body(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object body (an empty body is `{}`); unknown fields are a 400."""
    raw = await request.read()
    if not raw.strip():
        return {}
    obj = parse_json_object(raw)
    for name in obj:
        if name not in allowed:
            options = ", ".join(sorted(allowed))
            raise BadRequest(f"{str(name)[:40]}: unknown field; allowed: {options}")
    return obj


def text(value: object, field: str, max_chars: int) -> str:
    """A short display text: a string, trimmed, 1 to `max_chars`, no control characters."""
    if not isinstance(value, str):
        raise BadRequest(f"{field}: must be a string")
    trimmed = value.strip()
    if not trimmed or len(trimmed) > max_chars or has_control_chars(trimmed):
        raise BadRequest(f"{field}: must be 1 to {max_chars} characters, no control characters")
    return trimmed


def conversation_changes(obj: dict[str, Any]) -> dict[str, Any]:
    """`title` and/or `folder_id` (a folder id, or null to take it out of its folder)."""
    if not obj:
        raise BadRequest("body: give title and/or folder_id")
    changes: dict[str, Any] = {}
    if "title" in obj:
        changes["title"] = text(obj["title"], "title", MAX_TITLE_CHARS)
    if "folder_id" in obj:
        folder = obj["folder_id"]
        if folder is not None:
            if not isinstance(folder, str):
                raise BadRequest("folder_id: must be a string or null")
            validate_conversation_id(folder, "folder_id")
        changes["folder_id"] = folder
    return changes


def keep_count(obj: dict[str, Any]) -> int:
    value = obj.get("keep_count", 0)
    # bool is an int in Python, and 3.0 is a float: both are refused.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest("keep_count: must be a non-negative integer")
    return value


def folder_name(obj: dict[str, Any]) -> str:
    if "name" not in obj:
        raise BadRequest("name: is required")
    return text(obj["name"], "name", MAX_FOLDER_NAME_CHARS)


def default_provider(obj: dict[str, Any]) -> str | None:
    value = obj.get("default_provider")
    if value is None:
        return None
    if not isinstance(value, str) or value not in PROVIDERS:
        raise BadRequest(f"default_provider: must be null or one of {', '.join(PROVIDERS)}")
    return value
