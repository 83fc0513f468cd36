"""Versioned wire schemas shared by gateway, worker and history.

Every message on a queue or a channel is one of these models. Producers build
them from typed code (so they cannot add unknown fields); consumers ignore
fields they do not know, so a newer producer can add optional fields without
breaking an older consumer. A breaking change bumps `SCHEMA_VERSION` and the
AMQP `type`; see docs/adr/0002-message-schemas.md.
"""

from parley_common.schemas.events import (
    AssistantEvent,
    DoneEvent,
    ErrorEvent,
    EventEnvelope,
    MetaEvent,
    PublicEvent,
    ReasoningEvent,
    Source,
    StatusEvent,
    Usage,
    decode_batch,
    decode_envelope,
    encode_envelope,
)
from parley_common.schemas.jobs import (
    SCHEMA_VERSION,
    ChatJob,
    ContextMessage,
    ImageRef,
    TurnResult,
    TurnStatus,
)

__all__ = [
    "SCHEMA_VERSION",
    "AssistantEvent",
    "ChatJob",
    "ContextMessage",
    "DoneEvent",
    "ErrorEvent",
    "EventEnvelope",
    "ImageRef",
    "MetaEvent",
    "PublicEvent",
    "ReasoningEvent",
    "Source",
    "StatusEvent",
    "TurnResult",
    "TurnStatus",
    "Usage",
    "decode_batch",
    "decode_envelope",
    "encode_envelope",
]
