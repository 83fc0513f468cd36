from __future__ import annotations

from parley_common.providers import ProviderSettings
from parley_common.topology import PROVIDERS
from parley_common.web import WebSearchSettings
from pydantic import Field

DEFAULT_FETCH_CONTENT_TYPES = (
    "text/html,application/xhtml+xml,text/plain,text/markdown,application/json"
)


class WorkerSettings(ProviderSettings, WebSearchSettings):
    worker_host: str = "127.0.0.1"
    worker_port: int = 8082
    # Comma-separated providers this process serves; empty = every configured one.
    worker_providers: str = ""
    # Concurrent turns per provider in this process (AMQP prefetch per queue).
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    provider_connect_timeout: float = Field(default=10.0, gt=0)
    # Token deltas that arrive within this many milliseconds of the last publish wait
    # and go out together (one Redis message, one write to the client); the first
    # delta after a pause is never held. 0: batch only what arrives during a publish.
    # docs/benchmarks.md measures the choice.
    stream_flush_ms: int = Field(default=50, ge=0, le=1000)
    # The longest silence allowed between two chunks of a provider stream.
    provider_idle_timeout: float = Field(default=60.0, gt=0)
    # The longest one generation may take, start to finish.
    max_generation_seconds: float = Field(default=300.0, gt=0)
    # Per-provider concurrency overrides, e.g. "claude=4,ollama=1".
    provider_concurrency: str = ""
    # Claude extended thinking (adaptive) on/off, and its output budget.
    claude_thinking: bool = False
    claude_max_tokens: int = Field(default=8192, ge=1)
    # Ask Gemini for thought summaries (some models refuse it: turn it off there).
    google_thoughts: bool = True
    # Ollama `think`: unset sends nothing (models that cannot think reject true).
    ollama_think: bool | None = None
    # Retries of a provider call that failed before its first token (429, 5xx, network).
    provider_max_retries: int = Field(default=2, ge=0, le=10)
    provider_retry_base_seconds: float = Field(default=1.0, ge=0)
    provider_retry_max_wait: float = Field(default=20.0, ge=0)
    # Comma-separated providers to fall back along when one keeps failing before
    # its first token, e.g. "claude,google,openrouter,ollama". Empty: no fallback.
    fallback_chain: str = ""
    # How long a provider whose key was refused stays out of the fallback chain.
    provider_disable_seconds: int = Field(default=300, ge=1)
    # A redelivered job whose earlier attempt streamed tokens waits this long for that
    # attempt's `done` (its ack may have been lost while its result was saved).
    redelivery_grace_seconds: float = Field(default=5.0, ge=0, le=60)
    # On SIGTERM, how long running turns may take to finish before being failed.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # Web tools (`web: true`, docs/web-tools.md): model turns that may ask for tools.
    web_max_tool_steps: int = Field(default=4, ge=1, le=20)
    web_search_max_results: int = Field(default=5, ge=1, le=20)
    web_search_timeout: float = Field(default=10.0, gt=0)
    # Tests only: let web_fetch reach loopback, private and link-local addresses.
    web_fetch_allow_private: bool = False
    web_fetch_connect_timeout: float = Field(default=5.0, gt=0)
    # The longest silence while reading a page, and the longest a whole fetch may take.
    web_fetch_read_timeout: float = Field(default=10.0, gt=0)
    web_fetch_total_timeout: float = Field(default=20.0, gt=0)
    web_fetch_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    web_fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    # Characters of a page's text passed to the model.
    web_fetch_max_chars: int = Field(default=12_000, ge=200)
    web_fetch_content_types: str = DEFAULT_FETCH_CONTENT_TYPES

    def fallback_providers(self) -> list[str]:
        names = [p.strip() for p in self.fallback_chain.split(",") if p.strip()]
        return [p for p in names if p in PROVIDERS]

    def fetch_content_types(self) -> frozenset[str]:
        return frozenset(
            t.strip().lower() for t in self.web_fetch_content_types.split(",") if t.strip()
        )

    def concurrency_for(self, provider: str) -> int:
        for item in self.provider_concurrency.split(","):
            name, _, value = item.partition("=")
            if name.strip() == provider and value.strip().isdigit():
                return max(1, int(value))
        return self.worker_concurrency
