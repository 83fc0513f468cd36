"""Wire schemas: golden v1 JSON stays readable, consumers tolerate unknown fields."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from parley_common.schemas import ChatJob, Source, TurnResult, TurnStatus, decode_envelope
from parley_common.schemas.events import (
    DoneEvent,
    Usage,
    encode_delta,
    encode_envelope,
    parse_public,
)

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).parent / "golden"


def test_chat_job_v1_golden_parses_and_round_trips():
    raw = (GOLDEN / "chat_job_v1.json").read_text()
    job = ChatJob.model_validate_json(raw)
    assert job.v == 1 and job.provider == "groq" and job.messages[-1].role == "user"
    assert ChatJob.model_validate_json(job.model_dump_json()) == job


def test_turn_result_v1_golden_parses():
    result = TurnResult.model_validate_json((GOLDEN / "turn_result_v1.json").read_text())
    assert result.status is TurnStatus.error and result.reply == "partial"
    assert result.last_seq == 2


def test_consumers_ignore_fields_added_by_newer_producers():
    data = json.loads((GOLDEN / "chat_job_v1.json").read_text())
    data["a_future_field"] = {"x": 1}
    assert ChatJob.model_validate(data).job_id == data["job_id"]


def test_delta_envelope_carries_seq_type_and_public_payload():
    env = decode_envelope(encode_delta(7, "assistant", 'he said "hi"\n\nevent: done'))
    assert (env.seq, env.type, env.terminal) == (7, "assistant", False)
    assert env.payload() == {"type": "assistant", "delta": 'he said "hi"\n\nevent: done'}
    # The payload is one JSON line: a newline in a delta cannot start an SSE field.
    assert "\n" not in env.data and "\r" not in env.data


def test_done_envelope_is_terminal_and_parses_as_public_event():
    done = DoneEvent(
        reply="r",
        conversation_id="c",
        provider="groq",
        message_id="m",
        model="x",
        usage=Usage(input_tokens=1, output_tokens=2),
    )
    env = decode_envelope(encode_envelope(3, done))
    assert env.terminal
    assert parse_public(env.data) == done


def test_result_serialises_finished_at_as_utc():
    result = TurnResult(
        job_id="j",
        request_id="r",
        user_id="u",
        conversation_id="c",
        provider="groq",
        status=TurnStatus.complete,
        last_seq=0,
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert json.loads(result.model_dump_json())["finished_at"] == "2026-01-01T00:00:00Z"


def test_sources_are_optional_on_results_and_done_events():
    """`sources` (web tools) is a new optional field: v1 results without it still parse,
    and a done event carrying it parses as the public event it is."""
    old = TurnResult.model_validate_json((GOLDEN / "turn_result_v1.json").read_text())
    assert old.sources is None
    with_sources = old.model_copy(update={"sources": [Source(url="https://a.example/", title="A")]})
    assert TurnResult.model_validate_json(with_sources.model_dump_json()) == with_sources
    done = DoneEvent(
        reply="r",
        conversation_id="c",
        provider="groq",
        message_id="m",
        sources=[Source(url="https://a.example/", title="A")],
    )
    env = decode_envelope(encode_envelope(4, done))
    assert env.payload()["sources"] == [{"url": "https://a.example/", "title": "A"}]
    assert parse_public(env.data) == done
