"""History's cursors and timestamps: round trips, and garbage refused as a 400."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from parley_history.errors import BadRequest
from parley_history.handlers import (
    conversation_cursor,
    iso,
    message_cursor,
    parse_conversation_cursor,
    parse_message_cursor,
)

pytestmark = pytest.mark.unit


def test_timestamps_are_utc_milliseconds_with_z():
    assert iso(datetime(2026, 3, 6, 10, 30, 0, 123456, tzinfo=UTC)) == "2026-03-06T10:30:00.123Z"
    assert iso(datetime(2026, 3, 6, 10, 30)) == "2026-03-06T10:30:00.000Z"  # naive is UTC


@pytest.mark.parametrize("cid", ["u-1:web:conv-abc", "a:b/c%d?e#f", "ünï:cödé", "x:y:z:w"])
def test_conversation_cursor_round_trips_any_id(cid: str):
    ts = datetime(2026, 3, 6, 10, 30, 0, 123000, tzinfo=UTC)
    cursor = conversation_cursor({"_id": cid, "updated_at": ts})
    assert cursor.replace("-", "").replace("_", "").isalnum()
    key = parse_conversation_cursor(cursor)
    assert (key.updated_at, key.conversation_id) == (ts, cid)


def test_message_cursor_round_trips():
    assert parse_message_cursor(message_cursor({"seq": 42})) == 42


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "not-base64-at-all",
        _b64("m1:5"),
        _b64("c1:abc:id"),
        _b64("c1:1:"),
        _b64("c1:99999999999999999999:x"),
        "A" * 600,
    ],
)
def test_bad_conversation_cursors_are_400_naming_before(cursor: str):
    with pytest.raises(BadRequest, match=r"^before: "):
        parse_conversation_cursor(cursor)


@pytest.mark.parametrize(
    "cursor", ["", "%%", _b64("c1:1:x"), _b64("m1:-1"), _b64("m1:1e5"), _b64("m1:" + "9" * 30)]
)
def test_bad_message_cursors_are_400_naming_before(cursor: str):
    with pytest.raises(BadRequest, match=r"^before: "):
        parse_message_cursor(cursor)
