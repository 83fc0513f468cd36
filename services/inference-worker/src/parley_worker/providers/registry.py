"""Builds the adapter for each configured provider."""

from __future__ import annotations

from anthropic.types import ThinkingConfigAdaptiveParam
from parley_common.providers import IMPLEMENTED

from parley_worker.providers.anthropic import AnthropicProvider
from parley_worker.providers.base import Provider, Timeouts
from parley_worker.providers.google import GoogleProvider
from parley_worker.providers.ollama import OllamaProvider
from parley_worker.providers.openai_chat import OpenAIChatProvider
from parley_worker.providers.openai_responses import OpenAIResponsesProvider
from parley_worker.settings import WorkerSettings

SUPPORTED = IMPLEMENTED


def build_provider(settings: WorkerSettings, name: str, timeouts: Timeouts) -> Provider:
    config = settings.provider_config(name)
    if config is None:
        raise ValueError(f"provider {name!r} is not configured")
    match name:
        case "groq" | "openrouter":
            return OpenAIChatProvider(config, timeouts)
        case "openai":
            return OpenAIResponsesProvider(config, timeouts)
        case "claude":
            thinking: ThinkingConfigAdaptiveParam | None = (
                {"type": "adaptive"} if settings.claude_thinking else None
            )
            return AnthropicProvider(
                config, timeouts, max_tokens=settings.claude_max_tokens, thinking=thinking
            )
        case "google":
            return GoogleProvider(config, timeouts, include_thoughts=settings.google_thoughts)
        case "ollama":
            return OllamaProvider(config, timeouts, think=settings.ollama_think)
    raise ValueError(f"provider {name!r} is not supported by this worker")
