"""Limits (issue #7, point 3): body size, text length, image bytes and pixels, `limit`
and other bounded parameters are a 400 or 413 naming the field; the per-user request
rate and the per-user open streams are limited across gateways through Redis and
answered with 429 and `Retry-After`."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from parley_common.topology import Topology
from parley_gateway.app import create_app as create_gateway
from parley_gateway.errors import TooManyRequests
from parley_gateway.ratelimit import RateLimits

from tests.integration.test_providers_e2e import bomb_png, png
from tests.security.conftest import open_turn, wait_until
from tests.support.history import Api, seed_turns, seg, store_of, uid
from tests.support.infra import Infra
from tests.support.stack import Stack, _serve

pytestmark = pytest.mark.security

MIB = 1024 * 1024


def _image(data: bytes, mime: str = "image/png") -> dict[str, str]:
    return {"image_base64": base64.b64encode(data).decode(), "image_mime": mime}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"text": "x" * 32_001}, 400, "text"),
        ({"text": "hi", **_image(b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * MIB))}, 413, "image_base64"),
        ({"text": "hi", **_image(bomb_png())}, 400, "image_base64"),
        ({"text": "hi", **_image(bomb_png(20_000, 1))}, 400, "image_base64"),
        ({"text": "hi", **_image(png(), "image/svg+xml")}, 400, "image_mime"),
        ({"text": "hi", "conversation_id": "c" * 257}, 400, "conversation_id"),
        ({"text": "hi", "channel": "c" * 33}, 400, "channel"),
        ({"text": "hi", "provider": "p" * 10_000}, 400, "provider"),
    ],
    ids=[
        "text too long",
        "image over 5 MiB",
        "decompression bomb",
        "image side over the limit",
        "image type",
        "conversation id too long",
        "channel too long",
        "provider too long",
    ],
)
async def test_chat_limits_name_the_field(
    stack: Stack, body: dict[str, Any], status: int, field: str
):
    status_, resp = await Api(stack).post("/api/chat", uid(), json={"provider": "groq"} | body)
    assert status_ == status, resp
    assert resp["error"].startswith(f"{field}:"), resp
    assert len(resp["error"]) < 400  # the message never echoes the whole value


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/chat"),
        ("PATCH", "/api/chat/conversations/{c}"),
        ("POST", "/api/chat/folders"),
        ("PUT", "/api/me/settings"),
    ],
)
async def test_a_body_over_max_body_bytes_is_413_naming_the_body(
    stack: Stack, method: str, path: str
):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 1)
    raw = b'{"text": "' + b"x" * (8 * MIB + 10) + b'"}'
    status, body = await Api(stack).call(method, path.replace("{c}", seg(conv)), user, data=raw)
    assert status == 413 and body["error"].startswith("body:"), body


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/chat/conversations?limit=0", "limit"),
        ("/api/chat/conversations?limit=101", "limit"),
        ("/api/chat/conversations?limit=1e400", "limit"),
        (f"/api/chat/conversations?limit={2**70}", "limit"),
        ("/api/chat/conversations?limit=-1", "limit"),
        ("/api/chat/conversations?limit=%EF%BC%95", "limit"),  # a full-width digit
        ("/api/chat/conversations?limit=1&limit=2", "limit"),
        ("/api/chat/messages?conversation_id=x&limit=1000", "limit"),
        ("/api/chat/conversations?before=" + "A" * 600, "before"),
        ("/api/chat/conversations?channel=" + "c" * 40, "channel"),
        ("/api/chat/conversations?folder_id=" + "f" * 300, "folder_id"),
        ("/api/chat/messages?conversation_id=" + "c" * 300, "conversation_id"),
        ("/api/chat/jobs?conversation_id=" + "c" * 300, "conversation_id"),
    ],
)
async def test_query_parameters_are_capped_naming_the_field(stack: Stack, path: str, field: str):
    status, body = await Api(stack).get(path, uid())
    assert status == 400 and body["error"].startswith(f"{field}:"), body


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PATCH", "/api/chat/conversations/{c}", {"title": "t" * 201}, "title"),
        ("POST", "/api/chat/folders", {"name": "n" * 101}, "name"),
        ("POST", "/api/chat/conversations/{c}/truncate", {"keep_count": 2**70}, "keep_count"),
        ("POST", "/api/chat/conversations/{c}/truncate", {"keep_count": -1}, "keep_count"),
    ],
)
async def test_body_fields_are_capped_naming_the_field(
    stack: Stack, method: str, path: str, body: dict[str, Any], field: str
):
    user = uid()
    conv = await seed_turns(store_of(stack), user, 1)
    status, resp = await Api(stack).call(method, path.replace("{c}", seg(conv)), user, json=body)
    assert status == 400 and resp["error"].startswith(f"{field}:"), resp


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Idempotency-Key": "k" * 129}, "Idempotency-Key"),
        ({"Idempotency-Key": "a/b"}, "Idempotency-Key"),
    ],
)
async def test_bounded_headers_name_the_header(stack: Stack, headers: dict[str, str], field: str):
    status, body = await Api(stack).post(
        "/api/chat", uid(), json={"text": "hi", "provider": "groq"}, headers=headers
    )
    assert status == 400 and body["error"].startswith(f"{field}:"), body


# --- per-user request rate and open streams ---------------------------------------------


@pytest.fixture(scope="module")
async def rate_stack(infra: Infra) -> AsyncIterator[tuple[Stack, str]]:
    """A stack at 5 requests per minute per user, and a second gateway on the same Redis."""
    stack = await Stack(
        infra,
        providers=("groq",),
        env={"gateway": {"rate_limit_per_minute": 5, "max_streams_per_user": 0}},
    ).start()
    runner, second = await _serve(create_gateway(stack.gateway_settings))
    yield stack, second
    await runner.cleanup()
    await stack.stop()


@pytest.fixture(scope="module")
async def stream_stack(infra: Infra) -> AsyncIterator[tuple[Stack, str]]:
    """A stack allowing one open stream per user, and a second gateway on the same Redis."""
    stack = await Stack(
        infra,
        providers=("groq",),
        env={"gateway": {"rate_limit_per_minute": 0, "max_streams_per_user": 1}},
    ).start()
    runner, second = await _serve(create_gateway(stack.gateway_settings))
    yield stack, second
    await runner.cleanup()
    await stack.stop()


async def _get(stack: Stack, base: str, user: str) -> tuple[int, Any, dict[str, str]]:
    async with stack.http.get(f"{base}/api/me/settings", headers=stack.auth(user)) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_request_rate_is_per_user_and_shared_by_every_gateway(
    rate_stack: tuple[Stack, str],
):
    stack, second = rate_stack
    user, other = uid(), uid()
    for i in range(5):
        status, _, _ = await _get(stack, stack.url if i % 2 else second, user)
        assert status == 200
    for base in (stack.url, second):
        status, body, headers = await _get(stack, base, user)
        assert status == 429, body
        assert body["code"] == "rate_limited" and body["error"].startswith("rate limit:")
        assert 1 <= int(headers["Retry-After"]) <= 60
    assert (await _get(stack, stack.url, other))[0] == 200  # another user is unaffected
    # Probes and the API document are not counted nor limited.
    async with stack.http.get(f"{stack.url}/healthz") as resp:
        assert resp.status == 200


async def test_open_streams_are_limited_across_gateways(stream_stack: tuple[Stack, str]):
    stack, second = stream_stack
    user = uid()
    turn = await open_turn(stack, user)
    chat = {"text": "another", "provider": "groq"}
    for base in (stack.url, second):
        for stream in (True, False):
            async with stack.http.post(
                f"{base}/api/chat",
                json=chat | {"stream": stream},
                headers=stack.auth(user),
            ) as resp:
                body = await resp.json()
                assert resp.status == 429, body
                assert body["code"] == "too_many_streams" and body["error"].startswith("streams:")
                assert resp.headers["Retry-After"] == "5"
    async with stack.http.get(
        f"{second}/api/chat/jobs/{turn.job_id}/events", headers=stack.auth(user)
    ) as resp:
        assert resp.status == 429  # a resumed stream holds a slot too
    # Another user is unaffected; the slot comes back when the stream ends.
    assert (await stack.chat(uid(), chat)).last.event == "done"
    assert (await turn.rest())[-1].event == "done"
    assert (await stack.chat(user, chat)).last.event == "done"


async def test_a_client_that_disconnects_frees_its_slot(stream_stack: tuple[Stack, str]):
    stack, _ = stream_stack
    user = uid()
    key = Topology(stack.namespace).user_streams(user)
    redis = aioredis.from_url(stack.infra.redis_url)
    try:
        turn = await open_turn(stack, user)
        assert await redis.zcard(key) == 1
        turn.resp.close()  # drop the connection mid-stream

        async def freed() -> bool:
            return await redis.zcard(key) == 0

        await wait_until(freed, what="the stream slot to be released")
        assert (await stack.chat(user, {"text": "again", "provider": "groq"})).status == 200
    finally:
        await redis.aclose()


async def test_a_lease_left_by_a_crashed_gateway_expires(stream_stack: tuple[Stack, str]):
    """A gateway killed mid-stream never releases its lease: it frees itself by expiry."""
    stack, _ = stream_stack
    user = uid()
    key = Topology(stack.namespace).user_streams(user)
    redis = aioredis.from_url(stack.infra.redis_url)
    try:
        seconds, micros = await redis.time()
        expires = seconds + micros / 1e6 + 1.0
        await redis.zadd(key, {"lease-of-a-dead-gateway": expires})
        body = {"text": "hi", "provider": "groq"}
        assert (await stack.chat(user, body, stream=False)).status == 429

        async def expired() -> bool:
            s, us = await redis.time()
            return bool(s + us / 1e6 > expires)

        await wait_until(expired, what="the orphan lease to expire")
        assert (await stack.chat(user, body, stream=False)).status == 200
    finally:
        await redis.aclose()


async def test_a_held_slot_is_renewed_and_released(infra: Infra):
    redis = aioredis.from_url(infra.redis_url)
    topo = Topology(f"t{uid()}.")
    limits = RateLimits(redis, topo, per_minute=0, max_streams=1, lease_seconds=1)
    key = topo.user_streams("u")
    try:
        async with limits.stream_slot("u"):
            [(_, first)] = await redis.zrange(key, 0, -1, withscores=True)

            async def renewed() -> bool:
                scores = await redis.zrange(key, 0, -1, withscores=True)
                return bool(scores) and scores[0][1] > first + 0.5

            # Renewed past its first expiry: a long stream keeps its slot.
            await wait_until(renewed, what="the lease to be renewed")
            with pytest.raises(TooManyRequests):
                async with limits.stream_slot("u"):
                    pass
        assert await redis.zcard(key) == 0
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_limits_fail_open_when_redis_is_unreachable():
    """A Redis outage does not lock everyone out (the request is logged and served)."""
    redis = aioredis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    limits = RateLimits(redis, Topology("x."), per_minute=1, max_streams=1, lease_seconds=5)
    try:
        await limits.hit("u")
        await limits.hit("u")
        async with limits.stream_slot("u"):
            pass
    finally:
        await redis.aclose()


async def test_unauthenticated_requests_are_refused_before_any_counting(
    rate_stack: tuple[Stack, str],
):
    stack, _ = rate_stack
    for _ in range(8):
        async with stack.http.get(f"{stack.url}/api/me/settings") as resp:
            assert resp.status == 401
