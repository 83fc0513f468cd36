"""Parsing of the chat request body, field by field, with errors that name the field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from parley_common.topology import PROVIDERS

from parley_gateway.errors import BadRequest

MOODS = ("serious", "friendly", "normal")
PROVIDER_OPTIONS = (*PROVIDERS, "default")
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_CONVERSATION_ID = 256


@dataclass(frozen=True, slots=True)
class ChatRequest:
    text: str
    provider: str
    conversation_id: str | None
    mood: str
    web: bool
    image_base64: str | None
    image_mime: str | None
    channel: str
    stream: bool


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("body: not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    return body


def _opt_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field}: must be a string")
    return value


def _or(value: str | None, default: str) -> str:
    """An absent (or null) field takes its default; an empty string is a value, and so
    is refused by the field's own check."""
    return default if value is None else value


def _bool(body: dict[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{field}: must be true or false")
    return value


def has_control_chars(value: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def validate_conversation_id(value: str, field: str = "conversation_id") -> str:
    if not value or len(value) > MAX_CONVERSATION_ID:
        raise BadRequest(f"{field}: must be 1 to {MAX_CONVERSATION_ID} characters")
    if has_control_chars(value) or value != value.strip():
        raise BadRequest(f"{field}: contains control characters or surrounding spaces")
    return value


def parse_chat_request(body: dict[str, Any], max_text_chars: int) -> ChatRequest:
    text = body.get("text")
    if text is None:
        raise BadRequest("text: is required")
    if not isinstance(text, str):
        raise BadRequest("text: must be a string")
    if not text.strip():
        raise BadRequest("text: must not be empty")
    if len(text) > max_text_chars:
        raise BadRequest(f"text: longer than {max_text_chars} characters")
    if "\x00" in text:
        raise BadRequest("text: must not contain NUL characters")

    provider = _or(_opt_str(body, "provider"), "default")
    if provider not in PROVIDER_OPTIONS:
        raise BadRequest(
            f"provider: unknown provider {provider[:40]!r}; options: {', '.join(PROVIDER_OPTIONS)}"
        )
    mood = _or(_opt_str(body, "mood"), "normal")
    if mood not in MOODS:
        raise BadRequest(f"mood: unknown mood {mood[:40]!r}; options: {', '.join(MOODS)}")

    conversation_id = _opt_str(body, "conversation_id")
    if conversation_id is not None:
        validate_conversation_id(conversation_id)

    channel = _or(_opt_str(body, "channel"), "web")
    if not CHANNEL_RE.match(channel):
        raise BadRequest("channel: must match [a-z0-9][a-z0-9_-]{0,31}")

    web = _bool(body, "web", False)
    stream = _bool(body, "stream", False)
    image_base64 = _opt_str(body, "image_base64")
    image_mime = _opt_str(body, "image_mime")
    return ChatRequest(
        text=text,
        provider=provider,
        conversation_id=conversation_id,
        mood=mood,
        web=web,
        image_base64=image_base64,
        image_mime=image_mime,
        channel=channel,
        stream=stream,
    )
