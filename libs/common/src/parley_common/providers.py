"""Provider configuration from CONTRACT's environment names.

A provider is *configured* when its key is set (ollama: when `OLLAMA_HOST` is set).
The gateway uses this to refuse a turn for an unconfigured provider; the worker
uses it to build each provider's SDK client.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from parley_common.settings import CommonSettings
from parley_common.topology import PROVIDERS

DEFAULT_MODELS: dict[str, str] = {
    "claude": "claude-sonnet-4-6",
    "openai": "gpt-4.1-mini",
    "groq": "llama-3.3-70b-versatile",
    "openrouter": "openai/gpt-4o-mini",
    "google": "gemini-2.5-flash",
    "ollama": "llama3.2",
}

DEFAULT_BASE_URLS: dict[str, str | None] = {
    "claude": None,  # the SDK's own default
    "openai": None,
    "groq": "https://api.groq.com/openai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "google": None,
    "ollama": None,
}


# Providers that this release's workers can serve.
IMPLEMENTED: tuple[str, ...] = ("ollama", "groq", "google", "claude", "openai", "openrouter")


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    api_key: SecretStr | None
    base_url: str | None
    model: str


class ProviderSettings(CommonSettings):
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    claude_model: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str | None = None
    groq_api_key: SecretStr | None = None
    groq_base_url: str | None = None
    groq_model: str | None = None
    openrouter_api_key: SecretStr | None = None
    openrouter_base_url: str | None = None
    openrouter_model: str | None = None
    google_api_key: SecretStr | None = None
    gemini_api_key: SecretStr | None = None
    google_base_url: str | None = None
    google_model: str | None = None
    ollama_host: str | None = None
    ollama_model: str | None = None
    default_provider: str | None = None

    def provider_config(self, name: str) -> ProviderConfig | None:
        """The provider's configuration, or None when it is not configured."""
        key: SecretStr | None
        match name:
            case "claude":
                key, url, model = self.anthropic_api_key, self.anthropic_base_url, self.claude_model
            case "openai":
                key, url, model = self.openai_api_key, self.openai_base_url, self.openai_model
            case "groq":
                key, url, model = self.groq_api_key, self.groq_base_url, self.groq_model
            case "openrouter":
                key, url, model = (
                    self.openrouter_api_key,
                    self.openrouter_base_url,
                    self.openrouter_model,
                )
            case "google":
                key = self.google_api_key or self.gemini_api_key
                url, model = self.google_base_url, self.google_model
            case "ollama":
                if not self.ollama_host:
                    return None
                return ProviderConfig(
                    name, None, self.ollama_host, self.ollama_model or DEFAULT_MODELS[name]
                )
            case _:
                return None
        if key is None or not key.get_secret_value():
            return None
        return ProviderConfig(
            name, key, url or DEFAULT_BASE_URLS[name], model or DEFAULT_MODELS[name]
        )

    def configured_providers(self) -> list[str]:
        return [p for p in PROVIDERS if self.provider_config(p) is not None]

    def available_providers(self) -> list[str]:
        """Configured and implemented: the providers a turn may be sent to."""
        return [p for p in self.configured_providers() if p in IMPLEMENTED]
