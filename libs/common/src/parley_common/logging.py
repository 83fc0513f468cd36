"""structlog set-up shared by every service: JSON lines with contextvars merged.

`request_id`, `user_id`, `conversation_id`, `job_id` and `provider` are bound with
`structlog.contextvars.bind_contextvars` at the edge of each unit of work (HTTP
request, AMQP message: see `parley_common.amqp.log_context`) as soon as they are known,
and so appear on every line that work logs. Every value is scrubbed last (secrets,
secret shapes, inline image data: `parley_common.redact`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import orjson
import structlog

from parley_common.redact import REDACTED, REDACTOR

# Keys whose values are never written to a log line.
_SECRET_KEYS = frozenset(
    {"authorization", "api_key", "token", "password", "secret", "cookie", "jwt", "key"}
)


def _drop_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Runs last before rendering (after exceptions are formatted into text), so a key
    or token inside an exception message or traceback is scrubbed too."""
    for key, value in event_dict.items():
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = REDACTOR.scrub_value(value)
    return event_dict


class ScrubFilter(logging.Filter):
    """The same scrubbing for the standard library loggers that SDKs and aiohttp use."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = REDACTOR.scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = REDACTOR.scrub(record.exc_text)
        return True


def configure_logging(
    service: str, fmt: str = "json", level: str = "info", secrets: Iterable[str] = ()
) -> None:
    """`secrets`: this process's secret values (`settings.secret_values()`); they are
    scrubbed from every log line, as are bearer tokens, JWTs and API-key shapes."""
    REDACTOR.add(*secrets)
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)

    def add_service(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _drop_secrets,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that use the standard library logger: only warnings and up.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
