"""What every provider adapter takes and yields.

An adapter turns a `ProviderRequest` into an async stream of `TextDelta`,
`ReasoningDelta` and, at the end, one `Finish` (model and usage). Any failure
leaves the adapter as a `ProviderError`: SDK exceptions never escape it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from parley_common.schemas import ContextMessage, Usage


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect, and between two chunks of a stream."""

    connect: float = 10.0
    idle: float = 60.0


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    system: str
    messages: list[ContextMessage]


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


Chunk = TextDelta | ReasoningDelta | Finish


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


class Provider(Protocol):
    name: str
    model: str

    def stream(self, request: ProviderRequest) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...
