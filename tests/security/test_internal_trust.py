"""Internal trust (issue #7, point 4): history's API answers nothing without the service
credential, history will not start without one, and the gateway sends history only
the headers it sets itself, so a client's forged `X-Parley-User` is ignored."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from parley_gateway.app import create_app as create_gateway
from parley_history.app import MissingServiceToken
from parley_history.app import create_app as create_history
from parley_history.settings import HistorySettings
from pydantic import SecretStr
from yarl import URL

from tests.support.history import Api, seed_turns, seg, store_of, uid
from tests.support.stack import SERVICE_TOKEN, Stack, _serve

pytestmark = pytest.mark.security


@pytest.mark.parametrize(
    "token",
    ["", "short-token"],
    ids=["no token", "a token too short to be a secret"],
)
def test_history_refuses_to_start_without_a_service_token(token: str):
    with pytest.raises(MissingServiceToken):
        create_history(HistorySettings(_env_file=None, history_service_token=token))


def test_history_runs_open_only_when_told_to_explicitly():
    settings = HistorySettings(_env_file=None, history_allow_no_token=True)
    assert isinstance(create_history(settings), web.Application)


def _internal_routes(app: web.Application) -> list[tuple[str, str]]:
    """Every routed (method, path) of history's internal API, path parameters filled in."""
    found = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or not resource.canonical.startswith("/internal/"):
            continue
        if route.method == "HEAD":  # added by aiohttp beside each GET; no body to read
            continue
        path = re.sub(r"\{[^}]+\}", "x", resource.canonical)
        found.append((route.method, path))
    return found


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token-of-the-right-length",
        f"Bearer {SERVICE_TOKEN}x",
        f"Bearer {SERVICE_TOKEN[:-1]}",
        SERVICE_TOKEN,  # the token without its scheme
        f"Basic {SERVICE_TOKEN}",
        f"bearer  {SERVICE_TOKEN}",
    ],
    ids=["none", "wrong", "longer", "shorter", "no scheme", "basic", "odd spacing"],
)
async def test_every_internal_route_needs_the_service_credential(
    stack: Stack, authorization: str | None
):
    routes = _internal_routes(stack.history_app)
    assert len(routes) >= 14
    headers = {"X-Parley-User": "victim"}
    if authorization is not None:
        headers["Authorization"] = authorization
    for method, path in [*routes, ("GET", "/internal/v2/anything"), ("GET", "/admin")]:
        async with stack.http.request(
            method, f"{stack.history_url}{path}", headers=headers, json={}
        ) as resp:
            assert resp.status == 401, (method, path)
            assert (await resp.json())["code"] == "unauthorized"


async def test_history_probes_answer_without_the_credential(stack: Stack):
    for path in ("/healthz", "/readyz", "/metrics"):
        async with stack.http.get(f"{stack.history_url}{path}") as resp:
            assert resp.status == 200, path


async def test_a_malformed_user_header_is_refused_even_with_the_credential(stack: Stack):
    auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    for user in ("", "a" * 300):  # (control characters: aiohttp will not even send them)
        async with stack.http.get(
            f"{stack.history_url}/internal/v1/settings", headers=auth | {"X-Parley-User": user}
        ) as resp:
            assert resp.status == 400, repr(user)


class HistorySpy:
    """Sits between a gateway and history, records what the gateway sends, forwards it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[dict[str, str]] = []
        self.session: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request) -> web.Response:
        assert self.session is not None
        self.seen.append(dict(request.headers))
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self.session.request(
            request.method,
            URL(f"{self.target}{request.raw_path}", encoded=True),
            data=await request.read(),
            headers=headers,
        ) as resp:
            return web.Response(
                body=await resp.read(), status=resp.status, content_type=resp.content_type
            )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app


@pytest.fixture
async def spied(stack: Stack) -> AsyncIterator[tuple[str, HistorySpy]]:
    """A second gateway whose calls to history go through a HistorySpy."""
    spy = HistorySpy(stack.history_url)
    spy.session = aiohttp.ClientSession()
    spy_runner, spy_url = await _serve(spy.app())
    settings = stack.gateway_settings.model_copy(update={"history_url": spy_url})
    runner, url = await _serve(create_gateway(settings))
    yield url, spy
    await runner.cleanup()
    await spy_runner.cleanup()
    await spy.session.close()


async def test_the_gateway_sends_history_only_headers_it_sets(
    stack: Stack, spied: tuple[str, HistorySpy]
):
    url, spy = spied
    user, victim = uid("user"), uid("victim")
    conv = await seed_turns(store_of(stack), user, 2)
    token = stack.token(user)
    forged = {
        "Authorization": f"Bearer {token}",
        "X-Parley-User": victim,
        "X-Request-ID": "req-chosen-by-client",
        "Cookie": "session=stolen",
        "X-Forwarded-For": "10.0.0.1",
        "X-Evil": "1",
        "Proxy-Authorization": "Basic abc",
    }
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/api/me/settings", None),
        ("GET", "/api/chat/conversations", None),
        ("GET", f"/api/chat/messages?conversation_id={seg(conv)}", None),
        ("PATCH", f"/api/chat/conversations/{seg(conv)}", {"title": "renamed"}),
        ("POST", "/api/chat", {"text": "hi", "provider": "groq", "conversation_id": conv}),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, body in calls:
            async with http.request(
                method, URL(f"{url}{path}", encoded=True), json=body, headers=forged
            ) as resp:
                assert resp.status == 200, (path, await resp.text())
                await resp.read()
    assert len(spy.seen) >= len(calls)
    for headers in spy.seen:
        names = {k.lower() for k in headers}
        assert headers["X-Parley-User"] == user
        assert headers["Authorization"] == f"Bearer {SERVICE_TOKEN}"
        assert headers["X-Request-ID"] == "req-chosen-by-client"
        assert not names & {"cookie", "x-forwarded-for", "x-evil", "proxy-authorization"}
        assert token not in " ".join(headers.values())
    # Nothing was done as the victim.
    assert await stack.db["user_settings"].find_one({"_id": victim}) is None
    status, listed = await Api(stack).conversations(victim)
    assert status == 200 and listed["conversations"] == []


async def test_a_gateway_with_the_wrong_service_token_answers_503_not_401(stack: Stack):
    """A refused service credential is the deployment's fault: clients must not be told
    that their (valid) token was refused."""
    settings = stack.gateway_settings.model_copy(
        update={"history_service_token": SecretStr("a-wrong-service-token-0123")}
    )
    runner, url = await _serve(create_gateway(settings))
    try:
        async with stack.http.get(f"{url}/api/me/settings", headers=stack.auth(uid())) as resp:
            assert resp.status == 503
            assert (await resp.json())["code"] == "history_down"
    finally:
        await runner.cleanup()
