"""AMQP messages: chat jobs (gateway → worker) and turn results (worker → history)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from parley_common.schemas.events import Source, Usage

SCHEMA_VERSION = 1
JOB_TYPE = "parley.chat.job.v1"
TURN_TYPE = "parley.turn.result.v1"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ImageRef(_Wire):
    mime: str
    data_base64: str


class ContextMessage(_Wire):
    role: Literal["system", "user", "assistant"]
    content: str
    image: ImageRef | None = None


class ChatJob(_Wire):
    """One chat turn to be answered by a provider."""

    v: int = SCHEMA_VERSION
    job_id: str
    request_id: str
    user_id: str
    conversation_id: str
    provider: str
    mood: Literal["serious", "friendly", "normal"] = "normal"
    web: bool = False
    # Earlier turns then the new user message, oldest first.
    messages: list[ContextMessage]
    user_message_id: str
    created_at: datetime
    # Epoch seconds after which the job must not be started.
    deadline: float
    # Providers that already failed this turn before its first token (fallback).
    fallback_from: list[str] = Field(default_factory=list)
    # The job's events so far end at this sequence number (a fallback continues them).
    start_seq: int = Field(default=0, ge=0)


class TurnStatus(StrEnum):
    complete = "complete"
    error = "error"
    cancelled = "cancelled"


class TurnResult(_Wire):
    """A finished turn, successful or not, with whatever reply exists."""

    v: int = SCHEMA_VERSION
    job_id: str
    request_id: str
    user_id: str
    conversation_id: str
    provider: str
    model: str | None = None
    status: TurnStatus
    reply: str = ""
    reasoning: str = ""
    usage: Usage | None = None
    error: str | None = None
    error_code: str | None = None
    # Sequence number of the last event the worker published for this job.
    last_seq: int = Field(ge=0)
    finished_at: datetime
    # The pages the reply drew on, for a `web: true` turn (None otherwise).
    sources: list[Source] | None = None
