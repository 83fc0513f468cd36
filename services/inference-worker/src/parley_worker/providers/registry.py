"""Builds the adapter for each configured provider.

Each adapter module (and so its SDK) is imported only when its provider is built: a
worker started with `--provider groq` never loads the Anthropic or Gemini SDKs, which
makes per-provider worker processes start faster and smaller.
"""

from __future__ import annotations

from parley_common.providers import IMPLEMENTED

from parley_worker.providers.base import Provider, Timeouts
from parley_worker.settings import WorkerSettings

SUPPORTED = IMPLEMENTED


def build_provider(settings: WorkerSettings, name: str, timeouts: Timeouts) -> Provider:
    config = settings.provider_config(name)
    if config is None:
        raise ValueError(f"provider {name!r} is not configured")
    match name:
        case "groq" | "openrouter":
            from parley_worker.providers.openai_chat import OpenAIChatProvider

            return OpenAIChatProvider(config, timeouts)
        case "openai":
            from parley_worker.providers.openai_responses import OpenAIResponsesProvider

            return OpenAIResponsesProvider(config, timeouts)
        case "claude":
            from anthropic.types import ThinkingConfigAdaptiveParam

            from parley_worker.providers.anthropic import AnthropicProvider

            thinking: ThinkingConfigAdaptiveParam | None = (
                {"type": "adaptive"} if settings.claude_thinking else None
            )
            return AnthropicProvider(
                config, timeouts, max_tokens=settings.claude_max_tokens, thinking=thinking
            )
        case "google":
            from parley_worker.providers.google import GoogleProvider

            return GoogleProvider(config, timeouts, include_thoughts=settings.google_thoughts)
        case "ollama":
            from parley_worker.providers.ollama import OllamaProvider

            return OllamaProvider(config, timeouts, think=settings.ollama_think)
    raise ValueError(f"provider {name!r} is not supported by this worker")
