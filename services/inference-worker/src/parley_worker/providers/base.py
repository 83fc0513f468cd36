"""What every provider adapter takes and yields.

An adapter turns a `ProviderRequest` into an async stream of `TextDelta`,
`ReasoningDelta` and, at the end, one `Finish` (model and usage). Any failure
leaves the adapter as a `ProviderError`: SDK exceptions never escape it.

Tools: a request may offer `tools` (`ToolSpec`s, declared in the provider's
native function-calling form). When the model asks for one, the adapter yields a
`ToolCall` per call (and, where the provider needs its own turn back verbatim, one
`Replay`) before `Finish`. The caller runs the tools and calls again with the
request's `steps` grown by one `ToolStep` (the model's text, its calls, their
results), which the adapter sends back natively: Chat Completions `tool_calls` and
`role: tool` messages, Responses `function_call` / `function_call_output` items,
Anthropic `tool_use` / `tool_result` blocks, Gemini `functionCall` /
`functionResponse` parts, Ollama `tool_calls` and `role: tool` messages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from parley_common.schemas import ContextMessage, Usage


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect, and between two chunks of a stream."""

    connect: float = 10.0
    idle: float = 60.0


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call: its name, what it does, its JSON Schema arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asks for a tool. `id` pairs the call with its result (adapters make
    one up where the protocol has none); `extra` is adapter-private data that must go
    back with the call."""

    id: str
    name: str
    arguments: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolResult:
    call_id: str
    name: str
    content: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class Replay:
    """The assistant's turn in the adapter's own form, to be sent back unchanged with
    its tool results (Claude's signed thinking blocks, Gemini's thought signatures)."""

    data: Any


@dataclass(frozen=True, slots=True)
class ToolStep:
    """One model turn that asked for tools, and what the tools answered."""

    text: str
    calls: tuple[ToolCall, ...]
    results: tuple[ToolResult, ...]
    replay: Any = None


ToolChoice = Literal["auto", "none"]


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    system: str
    messages: list[ContextMessage]
    # Offered tools; empty: none are declared at all.
    tools: tuple[ToolSpec, ...] = ()
    # `none`: the tools stay declared (the conversation holds calls to them) but the
    # model must answer now.
    tool_choice: ToolChoice = "auto"
    # Tool steps of this turn so far, after `messages`.
    steps: tuple[ToolStep, ...] = ()

    def then(self, step: ToolStep, *, final: bool = False) -> ProviderRequest:
        """The next call of the turn: this one plus `step`; `final` allows no more tools."""
        return ProviderRequest(
            system=self.system,
            messages=self.messages,
            tools=self.tools,
            tool_choice="none" if final else self.tool_choice,
            steps=(*self.steps, step),
        )


def parse_arguments(raw: str | None) -> dict[str, Any]:
    """A tool call's JSON arguments; {} when they are missing or not a JSON object
    (the tool then reports the missing argument to the model)."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finish:
    model: str | None = None
    usage: Usage = field(default_factory=Usage)


Chunk = TextDelta | ReasoningDelta | ToolCall | Replay | Finish


class ProviderError(Exception):
    """A provider call that failed.

    `retryable` says whether the same call may succeed later (429, 5xx, network);
    `status` is the provider's HTTP status when there was one; `retry_after` is
    its `Retry-After` in seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


def http_error(
    provider: str,
    status: int,
    detail: str,
    *,
    retry_after: float | None = None,
    key_refused: bool = False,
) -> ProviderError:
    """The one mapping of a provider's HTTP error status, shared by every adapter."""
    if status == 429:
        code = "rate_limited"
    elif status in (401, 403) or key_refused:
        code = "auth_failed"
    elif status >= 500:
        code = "provider_unavailable"
    else:
        code = "provider_rejected"
    return ProviderError(
        f"{provider} returned HTTP {status}: {detail}",
        code=code,
        retryable=status == 429 or status >= 500,
        status=status,
        retry_after=retry_after,
    )


class Provider(Protocol):
    name: str
    model: str

    def stream(self, request: ProviderRequest) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...
