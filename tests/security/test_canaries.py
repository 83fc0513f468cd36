"""No secrets out (issue #7, point 5): the whole stack runs as processes (JSON logs in
files) with canary secrets: a JWT secret and the tokens signed with it, the service
token, and provider keys. Requests take every path (success, a provider error from a
provider that echoes the key back, validation errors, a dead-lettered job), and then
the logs of every process, every SSE event, every error body, the saved messages and
the dead-lettered payload are grepped for the canaries.

One provider key is shaped like a real key (`sk-…`: caught by its shape anywhere) and
one is not (caught because the worker registered its own keys), so both nets of
`parley_common.redact` are exercised.

User content that is not ours to log is checked the same way, in the logs of all three
services (issue #8, point 5): image data (a turn with an image, one whose provider
echoes the image back in its error, one whose image is refused) and a JWT pasted into
a chat's text.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import jwt
import pytest
from aiohttp import web
from parley_common.topology import Topology
from PIL import Image

from tests.e2e.conftest import ProcessStack, free_port
from tests.support.infra import Infra
from tests.support.sse import parse_sse
from tests.support.stack import _serve, drop_run

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]

TAG = secrets.token_hex(6)
CANARY_JWT_SECRET = f"canary-jwt-secret-{TAG}-0123456789abcdef"
CANARY_SERVICE_TOKEN = f"canary-service-token-{TAG}"
CANARY_GROQ_KEY = f"sk-canary-groq-{TAG}"
CANARY_OPENROUTER_KEY = f"canary-openrouter-key-{TAG}"  # no well-known key shape
CANARY_CLAUDE_KEY = f"sk-ant-canary-claude-{TAG}"


# A token of someone else's, pasted into a chat's text: user content, never a log field.
CANARY_TEXT_JWT = jwt.encode(
    {"sub": f"pasted-{TAG}", "iat": int(time.time()), "exp": int(time.time()) + 600},
    f"another-issuers-secret-{TAG}-0123456789abcdef",
    "HS256",
)


def canary_image() -> str:
    """A PNG of random pixels (so its base64 is found nowhere else), as base64."""
    out = io.BytesIO()
    Image.frombytes("RGB", (24, 24), os.urandom(24 * 24 * 3)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def canary_token(user: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": user, "iat": now, "exp": now + 600} | claims
    return jwt.encode(body, CANARY_JWT_SECRET, "HS256")


@dataclass
class LeakyProvider:
    """An OpenAI-compatible provider that refuses the key and echoes it back (as real
    providers partly do: "Incorrect API key provided: sk-…")."""

    seen_keys: list[str] = field(default_factory=list)
    seen_bodies: list[str] = field(default_factory=list)

    async def completions(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.seen_keys.append(auth.removeprefix("Bearer "))
        message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')} (header: {auth})"
        # Some providers quote the offending input back, an inline image included.
        body = await request.text()
        self.seen_bodies.append(body)
        if "data:image/" in body:
            start = body.index("data:image/")
            echoed = body[start : body.index('"', start)]
            message += f" (input: {echoed})"
        return web.json_response(
            {"error": {"message": message, "type": "invalid_request_error", "code": "bad_key"}},
            status=401,
            headers={"x-echo-authorization": auth},
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.completions)
        return app


@dataclass
class CanaryStack(ProcessStack):
    leaky_url: str = ""

    async def start(self) -> None:
        ports = {name: free_port() for name in ("gateway", "history", "worker", "sim")}
        self.ports = ports
        self.url = f"http://127.0.0.1:{ports['gateway']}"
        sim = f"http://127.0.0.1:{ports['sim']}"
        base = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_HOST"))}
        self._env = base | {
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "debug",
            "PARLEY_NAMESPACE": self.namespace,
            "RABBITMQ_URL": self.infra.rabbitmq_url,
            "REDIS_URL": self.infra.redis_url,
            "MONGODB_URL": f"{self.infra.mongodb_url}{self.db_name}",
            "GATEWAY_PORT": str(ports["gateway"]),
            "HISTORY_PORT": str(ports["history"]),
            "WORKER_PORT": str(ports["worker"]),
            "HISTORY_URL": f"http://127.0.0.1:{ports['history']}",
            "HISTORY_SERVICE_TOKEN": CANARY_SERVICE_TOKEN,
            "AUTH_JWT_SECRET": CANARY_JWT_SECRET,
            "GROQ_API_KEY": CANARY_GROQ_KEY,
            "GROQ_BASE_URL": f"{sim}/openai/v1",
            "OPENROUTER_API_KEY": CANARY_OPENROUTER_KEY,
            "OPENROUTER_BASE_URL": f"{self.leaky_url}/api/v1",
            # Configured (so the gateway takes turns for it) but served by no worker here:
            # its jobs wait in their queue, where the test dead-letters one.
            "ANTHROPIC_API_KEY": CANARY_CLAUDE_KEY,
            "ANTHROPIC_BASE_URL": sim,
            "CLAUDE_MODEL": "claude-sim-1",
        }
        self._spawn("sim", "parley_sim", "--port", str(ports["sim"]))
        self._spawn("history", "parley_history")
        await self.wait_http(f"http://127.0.0.1:{ports['history']}/readyz")
        self._spawn("worker", "parley_worker", "--provider", "groq", "--provider", "openrouter")
        await self.wait_http(f"http://127.0.0.1:{ports['worker']}/readyz")
        self._spawn("gateway", "parley_gateway")
        await self.wait_http(f"{self.url}/readyz")


@pytest.fixture
async def canary_stack(
    infra: Infra, tmp_path: Path
) -> AsyncIterator[tuple[CanaryStack, LeakyProvider]]:
    leaky = LeakyProvider()
    runner, leaky_url = await _serve(leaky.app())
    stack = CanaryStack(infra, tmp_path, leaky_url=leaky_url)
    try:
        await stack.start()
        yield stack, leaky
    finally:
        await stack.stop()
        await runner.cleanup()
        await drop_run(infra, stack.db_name, stack.namespace)


@dataclass
class Seen:
    """Everything that left the back end, as text, by where it was seen."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: str) -> None:
        self.texts[f"{where} #{len(self.texts)}"] = text


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _request(
    http: aiohttp.ClientSession,
    seen: Seen,
    method: str,
    url: str,
    token: str,
    **kw: Any,
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} | kw.pop("headers", {})
    async with http.request(method, url, headers=headers, **kw) as resp:
        text = await resp.text()
        seen.add(f"{method} {url.split('?')[0]} → {resp.status}", text)
        seen.add("response headers", json.dumps(dict(resp.headers)))
        return resp.status, text


async def _dead_letter_one_claude_job(infra: Infra, namespace: str, seen: Seen) -> None:
    """Take the waiting claude job off its queue and reject it, as a worker does with a
    poison job: RabbitMQ dead-letters it to `chat.jobs.dead`."""
    topo = Topology(namespace)
    connection = await aio_pika.connect(infra.rabbitmq_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(topo.jobs_queue("claude"))
        async with asyncio.timeout(20), queue.iterator() as jobs:
            async for message in jobs:
                await message.reject(requeue=False)
                break
        dead = await channel.get_queue(topo.dead_queue)
        async with asyncio.timeout(20), dead.iterator() as letters:
            async for copy in letters:
                await copy.ack()
                break
        seen.add("dead-lettered body", copy.body.decode())
        seen.add("dead-lettered headers", json.dumps(copy.headers, default=str))
        seen.add("dead-lettered properties", repr(copy.info()))
    finally:
        await connection.close()


async def test_canary_secrets_never_leave_through_any_path(
    infra: Infra, canary_stack: tuple[CanaryStack, LeakyProvider]
):
    stack, leaky = canary_stack
    user = f"canary-user-{TAG}"
    token = canary_token(user)
    seen = Seen()
    chat = f"{stack.url}/api/chat"
    sse = {"Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as http:
        # Success, as SSE and as JSON.
        status, text = await _request(
            http, seen, "POST", chat, token, json={"text": "hello", "provider": "groq"}, headers=sse
        )
        assert status == 200 and parse_sse(text)[0][-1].event == "done"
        conv = parse_sse(text)[0][-1].data["conversation_id"]
        status, _ = await _request(
            http, seen, "POST", chat, token, json={"text": "again", "provider": "groq"}
        )
        assert status == 200
        # A provider error whose text carries the key: as SSE and as JSON (502).
        status, text = await _request(
            http,
            seen,
            "POST",
            chat,
            token,
            json={"text": "x", "provider": "openrouter"},
            headers=sse,
        )
        error = parse_sse(text)[0][-1]
        assert error.event == "error" and "[redacted]" in error.data["error"], error.data
        status, _ = await _request(
            http, seen, "POST", chat, token, json={"text": "y", "provider": "openrouter"}
        )
        assert status == 502
        # Validation errors and refused tokens.
        for body in (
            {"text": "x" * 40_000},
            {"text": "hi", "provider": "nope"},
            {"text": "hi", "conversation_id": {"$ne": None}},
            {"text": "hi", "provider": token},
        ):
            status, _ = await _request(http, seen, "POST", chat, token, json=body)
            assert status == 400
        for bad in (
            token[:-4] + "AAAA",  # tampered signature
            canary_token(user, exp=int(time.time()) - 3600),  # expired
            canary_token(user, iat=None),  # missing iat
        ):
            status, _ = await _request(http, seen, "GET", f"{stack.url}/api/me/settings", bad)
            assert status == 401
        status, _ = await _request(
            http, seen, "GET", f"{stack.url}/api/chat/conversations?limit=1000", token
        )
        assert status == 400
        # A dead-lettered job: its client gets an error event.
        async with http.post(
            chat,
            json={"text": "poison", "provider": "claude"},
            headers={"Authorization": f"Bearer {token}"} | sse,
        ) as resp:
            assert resp.status == 200
            await _dead_letter_one_claude_job(infra, stack.namespace, seen)
            text = await resp.text()
        seen.add("dead-lettered stream", text)
        assert parse_sse(text)[0][-1].data["code"] == "job_dead_lettered"
        # What history saved, as the client reads it back.
        for path in (
            f"/api/chat/messages?conversation_id={conv}",
            "/api/chat/conversations",
        ):
            status, _ = await _request(http, seen, "GET", f"{stack.url}{path}", token)
            assert status == 200
        # User content: an image (saved and sent to the provider), an image the provider
        # echoes back in its error, a refused image, and a JWT pasted into the text.
        image = canary_image()
        for provider, expected in (("groq", "done"), ("openrouter", "error")):
            body = {
                "text": "what is this?",
                "provider": provider,
                "image_base64": image,
                "image_mime": "image/png",
            }
            async with http.post(chat, json=body, headers=_bearer(token) | sse) as resp:
                events = parse_sse(await resp.text())[0]
            assert events[-1].event == expected, events[-1].data
        assert any(image in b for b in leaky.seen_bodies), "the image never left"
        bad = {"text": "x", "image_base64": image[:-8] + "AAAAAAAA", "image_mime": "image/jpeg"}
        async with http.post(chat, json=bad, headers=_bearer(token)) as resp:
            assert resp.status == 400, await resp.text()
        pasted = {"text": f"is this token valid? {CANARY_TEXT_JWT}", "provider": "groq"}
        async with http.post(chat, json=pasted, headers=_bearer(token) | sse) as resp:
            events = parse_sse(await resp.text())[0]
        assert CANARY_TEXT_JWT in events[-1].data["reply"]  # the user's own text, echoed
    codes = await stack.stop()
    assert all(code == 0 for code in codes.values()), codes
    service_logs = {
        name: (stack.logdir / f"{name}.log").read_text()
        for name in ("gateway", "history", "worker")
    }
    assert all(service_logs.values()), "a service wrote no log at all"
    content = {
        "image (base64)": image,
        "image (a slice of it)": image[len(image) // 2 : len(image) // 2 + 48],
        "pasted JWT": CANARY_TEXT_JWT,
        "pasted JWT signature": CANARY_TEXT_JWT.rsplit(".", 1)[1],
    }
    logged = [
        f"{what} in {name}.log"
        for name, text in service_logs.items()
        for what, value in content.items()
        if value in text
    ]
    assert not logged, logged
    for name in ("gateway", "history", "worker", "sim"):
        seen.add(f"{name}.log", (stack.logdir / f"{name}.log").read_text())

    # The canaries did go where they belong (so their absence below means something).
    assert CANARY_OPENROUTER_KEY in leaky.seen_keys
    assert any("provider.failed" in line for line in stack.log_lines("worker"))

    canaries = {
        "JWT secret": CANARY_JWT_SECRET,
        "service token": CANARY_SERVICE_TOKEN,
        "groq key": CANARY_GROQ_KEY,
        "openrouter key": CANARY_OPENROUTER_KEY,
        "claude key": CANARY_CLAUDE_KEY,
        "user token": token,
        "user token signature": token.rsplit(".", 1)[1],
    }
    leaks = [
        f"{name} in {where}"
        for where, text in seen.texts.items()
        for name, value in canaries.items()
        if value in text
    ]
    assert not leaks, leaks
