"""The chat body parser: defaults, and a 400 naming the field for each bad input."""

from __future__ import annotations

import pytest
from parley_gateway.errors import BadRequest
from parley_gateway.validation import parse_chat_request, parse_json_object

pytestmark = pytest.mark.unit


def test_defaults_match_the_reference():
    req = parse_chat_request({"text": "hi"}, 100)
    assert (req.provider, req.mood, req.web, req.channel, req.stream) == (
        "default",
        "normal",
        False,
        "web",
        False,
    )
    assert req.conversation_id is None


def test_nulls_mean_defaults():
    req = parse_chat_request({"text": "hi", "provider": None, "mood": None, "web": None}, 100)
    assert (req.provider, req.mood, req.web) == ("default", "normal", False)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "x" * 101}, "text"),
        ({"text": "a\x00b"}, "text"),
        ({"text": "hi", "channel": "Web!"}, "channel"),
        ({"text": "hi", "stream": 1}, "stream"),
        ({"text": "hi", "conversation_id": "x" * 300}, "conversation_id"),
        ({"text": "hi", "conversation_id": {"$ne": None}}, "conversation_id"),
        ({"text": "hi", "mood": ["serious"]}, "mood"),
    ],
)
def test_bad_fields_are_named(body: dict[str, object], field: str):
    with pytest.raises(BadRequest) as err:
        parse_chat_request(body, 100)
    assert err.value.message.startswith(f"{field}:")


@pytest.mark.parametrize("raw", [b"", b"[]", b"nul", b"\xff\xfe", b'"text"'])
def test_body_must_be_a_json_object(raw: bytes):
    with pytest.raises(BadRequest) as err:
        parse_json_object(raw)
    assert err.value.message.startswith("body:")
