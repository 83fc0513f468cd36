"""Every provider end to end: gateway → RabbitMQ → worker → provider SDK → simulator.

Each provider is reached through its official SDK against the simulator that
speaks its wire protocol; these tests check what a client sees and what is saved.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from parley_worker.prompts import MOOD_PROMPTS
from PIL import Image

from tests.support.stack import Stack

pytestmark = pytest.mark.integration

PROVIDERS = ["ollama", "groq", "google", "claude", "openai", "openrouter"]


def png(width: int = 2, height: int = 2) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge canvas (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_provider_streams_reasoning_then_answer_with_usage_saved(stack: Stack, provider: str):
    res = await stack.chat(
        f"user-p-{provider}", {"text": "think first [[sim:reasoning]]", "provider": provider}
    )
    kinds = [e.event for e in res.events]
    assert kinds[0] == "meta" and kinds[-1] == "done", kinds
    assert "reasoning" in kinds and "assistant" in kinds
    assert kinds.index("reasoning") < kinds.index("assistant")
    done = res.last.data
    assert done["provider"] == provider and res.events[0].data["provider"] == provider
    assert done["reply"] == "".join(e.data["delta"] for e in res.of("assistant"))
    assert done["reply"] == "Echo: think first"
    assert done["model"]
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    reasoning = "".join(e.data["delta"] for e in res.of("reasoning"))
    saved = (await stack.messages_in_db(done["conversation_id"]))[-1]
    assert saved["reasoning"] == reasoning and saved["content"] == done["reply"]
    assert saved["model"] == done["model"] and saved["usage"] == done["usage"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_image_reaches_the_provider_and_is_stored(stack: Stack, provider: str):
    data = png()
    body = {
        "text": "what is this?",
        "provider": provider,
        "image_base64": base64.b64encode(data).decode(),
        "image_mime": "image/png",
    }
    res = await stack.chat(f"user-img-{provider}", body)
    assert res.last.event == "done", res.last.data
    assert res.last.data["reply"] == f"Echo: what is this? [image: image/png, {len(data)} bytes]"
    docs = await stack.messages_in_db(res.last.data["conversation_id"])
    assert docs[0]["image"]["mime"] == "image/png"
    assert base64.b64decode(docs[0]["image"]["data_base64"]) == data


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_mood_prompt_is_sent_natively(stack: Stack, provider: str):
    await stack.chat(
        f"user-mood-{provider}", {"text": "hi", "provider": provider, "mood": "serious"}
    )
    sent = json.dumps(stack.sim.requests[-1]["body"])
    assert json.dumps(MOOD_PROMPTS["serious"])[1:-1] in sent


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_provider_failure_after_retries_is_an_error_event(stack: Stack, provider: str):
    res = await stack.chat(
        f"user-err-{provider}", {"text": "x [[sim:status=500]]", "provider": provider}
    )
    assert res.last.event == "error" and res.last.data["provider"] == provider
    assert res.of("status"), "the retries were announced"
    saved = (await stack.messages_in_db(res.last.data["conversation_id"]))[-1]
    assert (saved["role"], saved["status"]) == ("assistant", "error")


@pytest.mark.parametrize(
    ("image", "mime", "status", "needle"),
    [
        (png(), "image/jpeg", 400, "not a image/jpeg"),
        (b"GIF89a" + b"\x00" * 20, "image/gif", 400, "not a readable"),
        (bomb_png(), "image/png", 400, "pixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * (5 * 1024 * 1024 + 10), "image/png", 413, "larger"),
    ],
    ids=["signature mismatch", "corrupt gif", "decompression bomb", "too large"],
)
async def test_bad_images_are_refused_naming_the_field(
    stack: Stack, image: bytes, mime: str, status: int, needle: str
):
    body = {
        "text": "hi",
        "provider": "claude",
        "image_base64": base64.b64encode(image).decode(),
        "image_mime": mime,
    }
    async with stack.http.post(
        f"{stack.url}/api/chat", json=body, headers=stack.auth("user-badimg")
    ) as resp:
        assert resp.status == status
        err = (await resp.json())["error"]
    assert err.startswith("image_base64:") and needle in err


async def test_an_earlier_image_is_not_sent_again_with_later_turns(stack: Stack):
    body = {
        "text": "look at this",
        "provider": "groq",
        "image_base64": base64.b64encode(png()).decode(),
        "image_mime": "image/png",
    }
    first = await stack.chat("user-img-later", body)
    assert "image_url" in json.dumps(stack.sim.requests[-1]["body"])
    conv = first.last.data["conversation_id"]
    second = await stack.chat(
        "user-img-later", {"text": "and now?", "provider": "groq", "conversation_id": conv}
    )
    assert second.last.data["reply"] == "Echo: and now?"
    sent = stack.sim.requests[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "image_url" not in json.dumps(sent)
    assert sent[1]["content"] == "look at this"
