"""Builds the adapter for each configured provider."""

from __future__ import annotations

from parley_common.providers import IMPLEMENTED, ProviderSettings

from parley_worker.providers.base import Provider, Timeouts
from parley_worker.providers.openai_chat import OpenAIChatProvider
from parley_worker.providers.openai_responses import OpenAIResponsesProvider

SUPPORTED = IMPLEMENTED


def build_provider(settings: ProviderSettings, name: str, timeouts: Timeouts) -> Provider:
    config = settings.provider_config(name)
    if config is None:
        raise ValueError(f"provider {name!r} is not configured")
    match name:
        case "groq" | "openrouter":
            return OpenAIChatProvider(config, timeouts)
        case "openai":
            return OpenAIResponsesProvider(config, timeouts)
    raise ValueError(f"provider {name!r} is not supported by this worker")
