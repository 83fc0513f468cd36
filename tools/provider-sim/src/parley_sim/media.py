"""Helpers shared by the simulated protocols: images, extra directives, reply text.

Besides the directives in `script.py`, two more are read from the same last user
message:

| directive           | effect                                                        |
|---------------------|---------------------------------------------------------------|
| `tool=A,B,…`        | call the declared tools in turn across rounds (every protocol; |
|                     | see `toolcalls.py`)                                           |
| `stream-error=TYPE` | after the first text chunk, send the protocol's in-stream     |
|                     | error (Anthropic, Gemini, Ollama)                             |

An image in the last user message is acknowledged in the echo:
`Echo: <text> [image: image/png, 68 bytes]`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from parley_sim.script import DIRECTIVE, Script


@dataclass(frozen=True, slots=True)
class Image:
    mime: str
    size: int


@dataclass(frozen=True, slots=True)
class Extras:
    tool: str | None = None
    stream_error: str | None = None


def parse_extras(text: str) -> Extras:
    found = dict(DIRECTIVE.findall(text))
    return Extras(tool=found.get("tool") or None, stream_error=found.get("stream-error") or None)


def decoded_size(data_base64: str, *, urlsafe: bool = False) -> int:
    """Bytes in a base64 payload (0 when it is not valid base64).

    With `urlsafe`, the URL-safe alphabet is accepted too, as in proto3 JSON (Gemini).
    """
    if urlsafe:
        data_base64 = data_base64.replace("-", "+").replace("_", "/")
        data_base64 += "=" * (-len(data_base64) % 4)
    try:
        return len(base64.b64decode(data_base64, validate=True))
    except (binascii.Error, ValueError):
        return 0


_DATA_URL = re.compile(r"^data:([^;,]+);base64,(.*)$", re.DOTALL)


def image_from_data_url(url: str) -> Image | None:
    m = _DATA_URL.match(url)
    if m is None:
        return None
    return Image(mime=m.group(1), size=decoded_size(m.group(2)))


def reply_text(script: Script, images: list[Image]) -> str:
    """The scripted reply, acknowledging any image the last user message carried."""
    reply = script.reply()
    if script.tokens is None:
        for image in images:
            reply += f" [image: {image.mime}, {image.size} bytes]"
    return reply


def sniff_mime(data: bytes) -> str:
    """The image type Ollama-style raw images carry only in their bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def openai_images(items: Any) -> list[Image]:
    """Images in the last user message of a Chat Completions `messages` or Responses `input`.

    Chat Completions parts are `{"type": "image_url", "image_url": {"url": <data URL>}}`;
    Responses parts are `{"type": "input_image", "image_url": <data URL>}`.
    """
    if not isinstance(items, list):
        return []
    last = next(
        (m for m in reversed(items) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    content = last.get("content") if last is not None else None
    out: list[Image] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if part.get("type") in ("image_url", "input_image") and isinstance(url, str):
            image = image_from_data_url(url)
            if image is not None:
                out.append(image)
    return out
