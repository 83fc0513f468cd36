"""The secret scrubber behind every log line and every provider error text (issue #7,
point 5): registered values, secret-shaped strings, exceptions and library logs."""

from __future__ import annotations

import base64
import logging
import os
import sys

import pytest
import structlog
from parley_common.logging import ScrubFilter, _drop_secrets
from parley_common.redact import DATA_ELIDED, REDACTED, REDACTOR, Redactor, secret_values
from parley_gateway.settings import GatewaySettings
from pydantic import SecretStr

pytestmark = pytest.mark.security

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJleHAiOjE3MDAwMDAwMDB9."
    "c2lnbmF0dXJlLW9mLWEtdG9rZW4"
)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Authorization: Bearer {JWT}", JWT),
        (f"token={JWT}&x=1", JWT),
        (
            "Incorrect API key provided: sk-proj-abcdefghijklmnop1234",
            "sk-proj-abcdefghijklmnop1234",
        ),
        (
            "key sk-ant-api03-abcdefghijklmnopqrstu was refused",
            "sk-ant-api03-abcdefghijklmnopqrstu",
        ),
        ("openrouter sk-or-v1-0123456789abcdef0123", "sk-or-v1-0123456789abcdef0123"),
        ("groq gsk_0123456789abcdefABCDEF", "gsk_0123456789abcdefABCDEF"),
        (
            "google AIzaSyA0123456789abcdefghijklmnopqrstuv",
            "AIzaSyA0123456789abcdefghijklmnopqrstuv",
        ),
        ("Authorization: Bearer opaque-token-value", "opaque-token-value"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ],
)
def test_secret_shapes_are_scrubbed_anywhere(text: str, secret: str):
    out = Redactor().scrub(text)
    assert secret not in out and REDACTED in out


def test_registered_values_are_scrubbed_whatever_they_look_like():
    r = Redactor(["plain-looking-value-42", "short"])
    assert r.scrub("a plain-looking-value-42 b") == f"a {REDACTED} b"
    assert r.scrub("short stays") == "short stays"  # too short to register
    assert r.scrub_value({"a": ["x plain-looking-value-42"], "n": 1}) == {
        "a": [f"x {REDACTED}"],
        "n": 1,
    }


def test_ordinary_text_is_left_alone():
    text = "job-0123456789abcdef01234567 finished for user-123 in conv u:web:conv-x (task-list)"
    assert Redactor().scrub(text) == text


def test_settings_name_their_secrets_and_url_passwords_only():
    settings = GatewaySettings(
        _env_file=None,
        auth_jwt_secret=SecretStr("jwt-secret-value-that-is-long-enough!"),
        redis_url=SecretStr("redis://:redis-password-1@cache:6379/0"),
        rabbitmq_url=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        openai_api_key=SecretStr("openai-key-value-123"),
    )
    found = settings.secret_values()
    assert "jwt-secret-value-that-is-long-enough!" in found
    assert "openai-key-value-123" in found
    assert "redis-password-1" in found
    assert not any("://" in v for v in found)
    assert secret_values([SecretStr("http://[bad")]) == []


def test_log_lines_are_scrubbed_after_exceptions_are_rendered():
    REDACTOR.add("registered-canary-value-xyz")
    try:
        raise RuntimeError("provider said: registered-canary-value-xyz / Bearer abcdef123456")
    except RuntimeError:
        exc_info = sys.exc_info()
    rendered = structlog.processors.format_exc_info(None, "error", {"exc_info": exc_info})
    event = _drop_secrets(
        None,
        "error",
        rendered | {"event": "x", "api_key": "whatever", "detail": {"h": f"Bearer {JWT}"}},
    )
    text = repr(event)
    assert "registered-canary-value-xyz" not in text and "abcdef123456" not in text
    assert JWT not in text and event["api_key"] == REDACTED


def test_standard_library_records_are_scrubbed():
    REDACTOR.add("stdlib-canary-value-xyz")
    record = logging.LogRecord(
        "openai",
        logging.WARNING,
        __file__,
        1,
        "headers: %s",
        ({"key": "stdlib-canary-value-xyz"},),
        None,
    )
    try:
        raise ValueError(f"Bearer {JWT}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert ScrubFilter().filter(record)
    out = logging.Formatter().format(record)
    assert "stdlib-canary-value-xyz" not in out and JWT not in out


def test_inline_image_data_is_elided_from_text_and_log_lines():
    """Image data is user content, never a log field: a `data:` URL or a long base64 run
    (an SDK or provider echoing a request back, an exception quoting its input) becomes
    `[data elided]`, in plain text, in structured values and in rendered exceptions."""
    b64 = base64.b64encode(os.urandom(600)).decode()
    for text in (
        f"bad input: data:image/png;base64,{b64}",
        f"bad input: data:image/png;base64,{b64[:40]} (truncated)",
        f'{{"inline_data": {{"mime_type": "image/png", "data": "{b64}"}}}}',
        f"urlsafe {b64.replace('+', '-').replace('/', '_')} end",
    ):
        out = Redactor().scrub(text)
        assert b64[:40] not in out and DATA_ELIDED in out, out
    try:
        raise ValueError(f"cannot decode image {b64}")
    except ValueError:
        exc_info = sys.exc_info()
    rendered = structlog.processors.format_exc_info(None, "error", {"exc_info": exc_info})
    event = _drop_secrets(None, "error", rendered | {"event": "x", "echo": [f"data {b64}"]})
    assert b64[:40] not in repr(event)


def test_ids_and_ordinary_long_text_are_not_mistaken_for_data():
    ids = "job-0123456789abcdef01234567 req-0123456789abcdef " + "a1b2c3d4" * 8
    prose = "word " * 200
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    for text in (ids, prose, path):
        assert Redactor().scrub(text) == text
