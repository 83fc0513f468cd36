"""The provider simulator in-process, and each adapter built against it through its real SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from parley_common.providers import ProviderConfig
from parley_sim.server import STATE, SimState, create_app
from parley_worker.providers.anthropic import AnthropicProvider
from parley_worker.providers.base import Provider, Timeouts
from parley_worker.providers.google import GoogleProvider
from parley_worker.providers.ollama import OllamaProvider
from parley_worker.providers.openai_chat import OpenAIChatProvider
from parley_worker.providers.openai_responses import OpenAIResponsesProvider
from pydantic import SecretStr

# Short enough that a hung test fails fast, long enough for a loaded CI machine.
TIMEOUTS = Timeouts(connect=5.0, idle=15.0)


@dataclass(frozen=True)
class Sim:
    url: str
    app: web.Application

    @property
    def state(self) -> SimState:
        return self.app[STATE]

    def bodies(self, api: str) -> list[dict[str, Any]]:
        """The bodies of the requests the simulator recorded for `api`."""
        return [r["body"] for r in self.state.requests if r["api"] == api]


@dataclass(frozen=True)
class Protocol:
    """One wire protocol: how its adapter is built and how the simulator records it."""

    id: str
    api: str  # `api` of the simulator's request records
    model: str
    path: str  # appended to the simulator's URL to make the adapter's base URL
    adapter: Callable[[ProviderConfig, Timeouts], Provider]
    keyless: bool = False

    def build(self, sim: Sim, key: str = "sim-key", timeouts: Timeouts = TIMEOUTS) -> Provider:
        secret = None if self.keyless and key == "sim-key" else SecretStr(key)
        config = ProviderConfig(self.id, secret, sim.url + self.path, self.model)
        return self.adapter(config, timeouts)


PROTOCOLS = [
    Protocol("openai-chat", "chat.completions", "sim-chat", "/openai/v1", OpenAIChatProvider),
    Protocol("openai-responses", "responses", "sim-responses", "/v1", OpenAIResponsesProvider),
    # Not a real Claude model name: the SDK warns about deprecated ones.
    Protocol("anthropic", "anthropic.messages", "claude-sim-1", "", AnthropicProvider),
    Protocol("gemini", "gemini.streamGenerateContent", "gemini-2.5-flash", "", GoogleProvider),
    Protocol("ollama", "ollama.chat", "llama3.2", "", OllamaProvider, keyless=True),
]


@pytest.fixture(scope="session")
async def sim_server() -> AsyncIterator[Sim]:
    app = create_app()
    # Handlers stop when their client goes away (a `hang` would otherwise hold shutdown).
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Sim(f"http://127.0.0.1:{port}", app)
    await runner.cleanup()


@pytest.fixture
def sim(sim_server: Sim) -> Sim:
    """The shared simulator, with an empty request log."""
    sim_server.state.requests.clear()
    return sim_server


@pytest.fixture(params=PROTOCOLS, ids=lambda p: p.id)
def protocol(request: pytest.FixtureRequest) -> Protocol:
    return request.param


@pytest.fixture
async def build(sim: Sim) -> AsyncIterator[Callable[..., Provider]]:
    """Builds adapters against the simulator and closes them after the test."""
    made: list[Provider] = []

    def make(protocol: Protocol, key: str = "sim-key", timeouts: Timeouts = TIMEOUTS) -> Provider:
        provider = protocol.build(sim, key, timeouts)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()
