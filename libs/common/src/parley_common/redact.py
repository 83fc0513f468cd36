"""Scrubbing secrets out of text that leaves a process (log lines, error messages).

Two nets, both applied by `Redactor.scrub`:

- the exact values of this process's own secrets (provider keys, the JWT secret, the
  service token, passwords inside engine URLs), registered once at start-up;
- shapes that are secrets wherever they come from: a `Bearer …` credential, anything
  that looks like a JWT, and API keys in the formats providers issue (`sk-…`,
  `sk-ant-…`, `sk-or-…`, `gsk_…`, `AIza…`, `xai-…`);
- inline data: a `data:…;base64,` URL or a run of 200+ base64 characters (an image a
  provider or SDK echoed back) becomes `[data elided]`.

The second net is what catches a key that an SDK or a provider echoes back in an
error ("Incorrect API key provided: sk-…"), even in a process that never held it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

REDACTED = "[redacted]"
DATA_ELIDED = "[data elided]"
# Values shorter than this are not registered: redacting "guest" everywhere would
# mangle logs and protect nothing.
MIN_SECRET_CHARS = 8

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # `Authorization: Bearer <anything>` and the like, whatever the credential looks like.
    (re.compile(r"\b(Bearer|bearer|BEARER|Basic)\s+[A-Za-z0-9._~+/=\-]{6,}"), rf"\1 {REDACTED}"),
    # A JWT: header.payload.signature, the first two base64url JSON objects (`eyJ`).
    (re.compile(r"eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"), REDACTED),
    # Provider API keys.
    (
        re.compile(r"\bsk-[A-Za-z0-9][A-Za-z0-9_\-]{14,}|\b(?:gsk|xai)[_-][A-Za-z0-9]{16,}"),
        REDACTED,
    ),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"), REDACTED),
    # Inline data (an image as a `data:` URL or bare base64, as providers and SDKs echo
    # a request back): not a secret, but user content that never belongs in a log line.
    # No id, key or word is 200 base64 characters without a break.
    (re.compile(r"data:[\w.+-]+/[\w.+-]+;base64,[A-Za-z0-9+/=_-]*"), DATA_ELIDED),
    # (The lookbehind starts a match only where a run starts: linear time.)
    (re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{200,}={0,2}"), DATA_ELIDED),
)


class Redactor:
    """Replaces registered secret values and secret-shaped substrings with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._value_re: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *values: str) -> None:
        fresh = {v for v in values if v and len(v) >= MIN_SECRET_CHARS} - self._values
        if not fresh:
            return
        self._values |= fresh
        # Longest first, so that a secret containing another is replaced whole.
        alternatives = sorted(self._values, key=len, reverse=True)
        self._value_re = re.compile("|".join(re.escape(v) for v in alternatives))

    def scrub(self, text: str) -> str:
        if self._value_re is not None:
            text = self._value_re.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def scrub_value(self, value: Any, depth: int = 0) -> Any:
        """Strings anywhere inside dicts, lists and tuples (a log line's values)."""
        if isinstance(value, str):
            return self.scrub(value)
        if depth > 8:
            return value
        if isinstance(value, dict):
            return {k: self.scrub_value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub_value(v, depth + 1) for v in value)
        return value


# The process's redactor: logging and error messages share it, and each service adds
# its own secrets at start-up (`configure_logging(..., secrets=settings.secret_values())`).
REDACTOR = Redactor()


def scrub(text: str) -> str:
    return REDACTOR.scrub(text)


def secret_values(fields: Iterable[object]) -> list[str]:
    """The secret strings among settings values: every `SecretStr`, and for URLs the
    password inside them (the rest of a URL is not secret and stays readable)."""
    found: list[str] = []
    for value in fields:
        if not isinstance(value, SecretStr):
            continue
        raw = value.get_secret_value()
        if "://" in raw:
            try:
                password = urlsplit(raw).password
            except ValueError:
                password = None
            if password:
                found.append(password)
            continue
        found.append(raw)
    return found
