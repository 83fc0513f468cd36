"""GET/PUT /api/me/settings, and `provider: "default"` using the user's saved default."""

from __future__ import annotations

import pytest

from tests.support.history import Api, uid
from tests.support.infra import Infra
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


async def _answered_by(stack: Stack, user: str, body: dict[str, str] | None = None) -> str:
    res = await stack.chat(user, {"text": "who answers?", **(body or {})})
    assert res.last.event == "done", res.raw
    provider: str = res.last.data["provider"]
    assert res.events[0].data["provider"] == provider
    return provider


async def test_settings_start_empty_and_can_be_saved_and_cleared(stack: Stack):
    user, api = uid(), Api(stack)
    assert await api.get("/api/me/settings", user) == (200, {"default_provider": None})
    assert await api.put("/api/me/settings", user, json={"default_provider": "openrouter"}) == (
        200,
        {"default_provider": "openrouter"},
    )
    assert await api.get("/api/me/settings", user) == (200, {"default_provider": "openrouter"})
    assert await api.put("/api/me/settings", user, json={"default_provider": None}) == (
        200,
        {"default_provider": None},
    )
    await api.put("/api/me/settings", user, json={"default_provider": "groq"})
    # PUT replaces the whole object: a field left out is reset.
    assert await api.put("/api/me/settings", user, json={}) == (200, {"default_provider": None})


async def test_settings_are_per_user(stack: Stack):
    a, b, api = uid("a"), uid("b"), Api(stack)
    await api.put("/api/me/settings", a, json={"default_provider": "openai"})
    assert await api.get("/api/me/settings", b) == (200, {"default_provider": None})


@pytest.mark.parametrize(
    "body",
    [
        {"default_provider": "skynet"},
        {"default_provider": "default"},
        {"default_provider": "GROQ"},
        {"default_provider": 5},
        {"default_provider": ["groq"]},
        {"default_provider": {"$ne": None}},
    ],
)
async def test_unknown_default_provider_is_400(stack: Stack, body: dict[str, object]):
    user, api = uid(), Api(stack)
    status, resp = await api.put("/api/me/settings", user, json=body)
    assert status == 400 and resp["error"].startswith("default_provider: "), resp
    assert "groq" in resp["error"] and "openrouter" in resp["error"]
    assert await api.get("/api/me/settings", user) == (200, {"default_provider": None})


async def test_unknown_settings_field_is_400(stack: Stack):
    status, resp = await Api(stack).put("/api/me/settings", uid(), json={"theme": "dark"})
    assert status == 400 and resp["error"].startswith("theme: ")


async def test_default_provider_uses_the_saved_default_when_it_is_configured(stack: Stack):
    user, api = uid(), Api(stack)
    assert await _answered_by(stack, user) == "ollama"  # first configured
    await api.put("/api/me/settings", user, json={"default_provider": "openrouter"})
    assert await _answered_by(stack, user) == "openrouter"
    assert await _answered_by(stack, user, {"provider": "default"}) == "openrouter"
    # An explicit provider still wins over the saved default.
    assert await _answered_by(stack, user, {"provider": "openai"}) == "openai"


async def test_a_saved_default_that_is_not_configured_falls_back(infra: Infra):
    stack = await Stack(infra, providers=("groq", "openrouter")).start()
    try:
        user, api = uid(), Api(stack)
        await api.put("/api/me/settings", user, json={"default_provider": "claude"})
        assert await _answered_by(stack, user) == "groq"
    finally:
        await stack.stop()


async def test_saved_default_comes_before_default_provider(infra: Infra):
    stack = await Stack(infra, env={"gateway": {"default_provider": "openai"}}).start()
    try:
        user, api = uid(), Api(stack)
        assert await _answered_by(stack, user) == "openai"  # DEFAULT_PROVIDER
        await api.put("/api/me/settings", user, json={"default_provider": "openrouter"})
        assert await _answered_by(stack, user) == "openrouter"
        await api.put("/api/me/settings", user, json={"default_provider": None})
        assert await _answered_by(stack, user) == "openai"
    finally:
        await stack.stop()
