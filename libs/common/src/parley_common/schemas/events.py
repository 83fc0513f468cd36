"""Stream events: what a client sees as SSE, and how they travel through Redis.

The public payloads (`MetaEvent` … `ErrorEvent`) are exactly the reference's
event objects plus CONTRACT's extensions. On Redis each is wrapped in an
`EventEnvelope` carrying the per-job sequence number, which becomes the SSE
`id`. Per-token events are encoded by hand with orjson: this is the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input_tokens: int | None = None
    output_tokens: int | None = None


class Source(BaseModel):
    """A web page a reply drew on (web tools): where it is, and what it is called."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    url: str
    title: str = ""


class MetaEvent(_Event):
    type: Literal["meta"] = "meta"
    conversation_id: str
    provider: str
    job_id: str


class AssistantEvent(_Event):
    type: Literal["assistant"] = "assistant"
    delta: str


class ReasoningEvent(_Event):
    type: Literal["reasoning"] = "reasoning"
    delta: str


class StatusEvent(_Event):
    type: Literal["status"] = "status"
    message: str


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    reply: str
    conversation_id: str
    provider: str
    message_id: str | None
    model: str | None = None
    usage: Usage | None = None
    # The pages the reply drew on, for a `web: true` turn (null otherwise).
    sources: list[Source] | None = None


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    error: str
    conversation_id: str
    provider: str
    code: str | None = None
    message_id: str | None = None


PublicEvent = Annotated[
    MetaEvent | AssistantEvent | ReasoningEvent | StatusEvent | DoneEvent | ErrorEvent,
    Field(discriminator="type"),
]
_PUBLIC = TypeAdapter(PublicEvent)

TERMINAL_TYPES = frozenset({"done", "error"})


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """One event as stored in a job's replay log and published on its channel.

    A plain dataclass, not a model: the gateway decodes one per token."""

    seq: int
    type: str
    # The public payload, already JSON-encoded, relayed verbatim as SSE `data`.
    data: str
    v: int = 1

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.data)
        return loaded


def encode_envelope(seq: int, event: BaseModel) -> bytes:
    """Encode a public event with its sequence number for Redis."""
    data = event.model_dump_json(exclude_none=False)
    etype = getattr(event, "type")  # noqa: B009 - every public event has a literal `type`
    return orjson.dumps({"v": 1, "seq": seq, "type": etype, "data": data})


def encode_delta(seq: int, etype: Literal["assistant", "reasoning"], delta: str) -> bytes:
    """Hot path: one token delta, without building a model."""
    data = orjson.dumps({"type": etype, "delta": delta}).decode()
    return orjson.dumps({"v": 1, "seq": seq, "type": etype, "data": data})


def decode_envelope(raw: bytes | str) -> EventEnvelope:
    obj = orjson.loads(raw)
    return EventEnvelope(
        seq=int(obj["seq"]), type=str(obj["type"]), data=str(obj["data"]), v=int(obj.get("v", 1))
    )


def decode_batch(raw: bytes | str) -> list[EventEnvelope]:
    """A channel message: one or more envelopes, newline-separated (orjson never writes
    a raw newline inside one)."""
    if isinstance(raw, str):
        raw = raw.encode()
    return [decode_envelope(line) for line in raw.split(b"\n") if line]


def parse_public(data: str | bytes) -> PublicEvent:
    return _PUBLIC.validate_json(data)
