"""Fixtures of the security tests: an identity provider's JWKS endpoint on port 0 (that
counts its hits), a stack whose gateway trusts it, and a helper that opens a live turn."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.infra import Infra
from tests.support.sse import SseEvent, parse_sse
from tests.support.stack import Stack, _serve

AUDIENCE = "parley-api"
ISSUER = "https://idp.parley.test/"


@dataclass
class IdentityProvider:
    """Signs tokens like an identity provider and serves its JWKS at `/jwks.json`.

    `hits` counts requests per path, so a test can prove the gateway did (not) fetch."""

    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    hits: Counter[str] = field(default_factory=Counter)
    extra_keys: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key(), as_dict=True)
        ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key(), as_dict=True)
        return {
            "keys": [
                rsa_jwk | {"kid": "rsa-1", "use": "sig", "alg": "RS256"},
                ec_jwk | {"kid": "ec-1", "use": "sig"},
                *self.extra_keys,
            ]
        }

    def app(self) -> web.Application:
        async def jwks(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            return web.json_response(self.jwks())

        async def anything(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            return web.json_response({"keys": []})

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        app.router.add_get("/{tail:.*}", anything)
        return app

    def claims(self, user: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        body = {"sub": user, "iat": now, "exp": now + 300, "aud": AUDIENCE, "iss": ISSUER}
        return {k: v for k, v in (body | overrides).items() if v is not None}

    def rs256(
        self, user: str, kid: str = "rsa-1", headers: dict[str, Any] | None = None, **c: Any
    ) -> str:
        return jwt.encode(
            self.claims(user, **c), self.rsa_key, "RS256", headers={"kid": kid} | (headers or {})
        )

    def es256(self, user: str, kid: str = "ec-1", **c: Any) -> str:
        return jwt.encode(self.claims(user, **c), self.ec_key, "ES256", headers={"kid": kid})


@pytest.fixture(scope="session")
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider()
    runner, provider.url = await _serve(provider.app())
    yield provider
    await runner.cleanup()


@pytest.fixture(scope="session")
async def sec_stack(infra: Infra, idp: IdentityProvider) -> AsyncIterator[Stack]:
    """A stack whose gateway takes HS256 tokens (the test secret) and RS256/ES256 tokens
    from `idp`, with the audience and issuer checked."""
    stack = Stack(
        infra,
        providers=("groq",),
        env={
            "gateway": {
                "auth_jwks_url": f"{idp.url}/jwks.json",
                "auth_audience": AUDIENCE,
                "auth_issuer": ISSUER,
                "auth_jwks_min_refetch_seconds": 300,
            }
        },
    )
    await stack.start()
    yield stack
    await stack.stop()


@pytest.fixture(scope="session")
async def open_stack(infra: Infra) -> AsyncIterator[Stack]:
    """Per-user limits off: the fuzzer and the corpus send thousands of requests as one
    user."""
    stack = Stack(
        infra,
        providers=("groq",),
        env={"gateway": {"rate_limit_per_minute": 0, "max_streams_per_user": 0}},
    )
    await stack.start()
    yield stack
    await stack.stop()


async def status_of(stack: Stack, token: str | None, path: str = "/api/me/settings") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with stack.http.get(f"{stack.url}{path}", headers=headers) as resp:
        await resp.read()
        return resp.status


@dataclass
class LiveTurn:
    """A turn whose SSE stream is open: its `meta` event has been read."""

    resp: aiohttp.ClientResponse
    meta: dict[str, Any]

    @property
    def job_id(self) -> str:
        return str(self.meta["job_id"])

    @property
    def conversation_id(self) -> str:
        return str(self.meta["conversation_id"])

    async def rest(self) -> list[SseEvent]:
        """Read the stream to its end."""
        text = (await self.resp.read()).decode()
        self.resp.release()
        return parse_sse(text)[0]


async def open_turn(
    stack: Stack,
    user: str,
    text: str = "[[sim:tokens=40]][[sim:delay-ms=100]] slow",
    *,
    url: str | None = None,
    **body: Any,
) -> LiveTurn:
    """Start a slow turn as SSE and return once its `meta` event arrived."""
    resp = await stack.http.post(
        f"{url or stack.url}/api/chat",
        json={"text": text, "provider": "groq", **body},
        headers=stack.auth(user) | {"Accept": "text/event-stream"},
    )
    assert resp.status == 200, await resp.text()
    lines: list[str] = []
    while True:
        line = (await resp.content.readline()).decode()
        assert line, "stream ended before its meta event"
        if line.strip() == "" and any(x.startswith("data:") for x in lines):
            break
        lines.append(line.rstrip("\n"))
    data = next(x for x in lines if x.startswith("data:")).removeprefix("data:").strip()
    return LiveTurn(resp, json.loads(data))


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, within: float = 10, what: str = "condition"
) -> None:
    """Poll `check` until it holds: for state with no event to await, such as a key
    expiring in Redis. Raises TimeoutError naming `what`."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)  # polling: nothing announces this state change
