"""The `openai` SDK's client and its exceptions as `ProviderError` (shared by Chat
Completions and Responses)."""

from __future__ import annotations

import httpx2
import openai
from parley_common.providers import ProviderConfig

from parley_worker.providers.base import ProviderError, Timeouts, http_error


def _retry_after(headers: object) -> float | None:
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value = get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def openai_timeout(timeouts: Timeouts) -> openai.Timeout:
    return openai.Timeout(timeouts.idle, connect=timeouts.connect)


def openai_client(config: ProviderConfig, timeouts: Timeouts) -> openai.AsyncOpenAI:
    """The SDK's client on its aiohttp transport (`openai[aiohttp]`, documented by the
    SDK "for improved concurrency"): aiohttp's C HTTP parser reads a streamed reply
    for a fraction of the CPU of the default transport (docs/benchmarks.md).
    Retries are Parley's (worker-level, before the first token), not the SDK's."""
    assert config.api_key is not None
    timeout = openai_timeout(timeouts)
    return openai.AsyncOpenAI(
        api_key=config.api_key.get_secret_value(),
        base_url=config.base_url,
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAioHttpClient(timeout=timeout),
    )


def map_openai_error(provider: str, exc: Exception) -> ProviderError:
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = _error_message(exc)
        return http_error(provider, status, detail, retry_after=_retry_after(exc.response.headers))
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(f"{provider} timed out", code="provider_timeout", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(
            f"{provider} connection failed: {type(exc.__cause__ or exc).__name__}",
            code="provider_unreachable",
            retryable=True,
        )
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(f"{provider} timed out", code="provider_timeout", retryable=True)
    if isinstance(exc, httpx2.HTTPError):
        return ProviderError(
            f"{provider} connection broke: {type(exc).__name__}",
            code="provider_unreachable",
            retryable=True,
        )
    if isinstance(exc, openai.APIError):
        return ProviderError(
            f"{provider} stream failed: {exc.message}", code="provider_error", retryable=False
        )
    return ProviderError(
        f"{provider} stream failed: {type(exc).__name__}", code="provider_error", retryable=False
    )


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:300]
    return exc.message[:300]
