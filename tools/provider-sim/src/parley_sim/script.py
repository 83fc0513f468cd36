"""How a simulated reply is chosen: directives in the last user message.

Directives are `[[sim:NAME]]` or `[[sim:NAME=VALUE]]` anywhere in the text:

| directive            | effect                                                        |
|----------------------|---------------------------------------------------------------|
| `status=429`         | answer with that HTTP status and the provider's error body    |
| `retry-after=S`      | with `status`, send `Retry-After: S`                          |
| `fail-times=N`       | with `status`, fail only the first N calls for this text      |
| `drop-after=N`       | stream N text chunks, then cut the connection                 |
| `reasoning`          | stream reasoning before the answer                            |
| `delay-ms=N`         | wait N ms before each chunk                                   |
| `hang`               | send the response headers, then nothing                       |
| `tokens=N`           | answer with N generated words                                 |
| `chunk-bytes=N`      | with `tokens`, pad each generated word to N bytes              |
| `fail-only=NAME`     | with `status`, fail only on that route (see `route_name`)     |
| `tool=A,B,…`         | when the request declares tools, call A, then (once A's result |
|                      | is back) B, …, then answer quoting the last result; a `url`   |
|                      | argument takes the first URL of the previous result (so       |
|                      | `tool=web_search,web_fetch` reads the first hit); see         |
|                      | `toolcalls.py` (every protocol)                               |

Without directives the reply is `Echo: <text>` (directives removed), streamed
word by word, so tests know exactly what to expect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIRECTIVE = re.compile(r"\[\[sim:([a-z-]+)(?:=([^\]]*))?\]\]")


@dataclass(frozen=True, slots=True)
class Script:
    text: str
    status: int | None = None
    retry_after: str | None = None
    fail_times: int | None = None
    drop_after: int | None = None
    reasoning: bool = False
    delay_ms: int = 0
    hang: bool = False
    tokens: int | None = None
    fail_only: str | None = None
    chunk_bytes: int | None = None

    def reply(self) -> str:
        if self.tokens is not None:
            pad = self.chunk_bytes or 0
            return " ".join(f"word{i}".ljust(pad, "x") for i in range(self.tokens))
        return f"Echo: {self.text}"

    def reasoning_text(self) -> str:
        return "Let me think about this. The user wants an echo."


def parse_script(text: str) -> Script:
    found = dict(DIRECTIVE.findall(text))
    clean = DIRECTIVE.sub("", text).strip()

    def num(name: str) -> int | None:
        return int(found[name]) if found.get(name, "").isdigit() else None

    return Script(
        text=clean,
        status=num("status"),
        retry_after=found.get("retry-after") or None,
        fail_times=num("fail-times"),
        drop_after=num("drop-after"),
        reasoning="reasoning" in found,
        delay_ms=num("delay-ms") or 0,
        hang="hang" in found,
        tokens=num("tokens"),
        fail_only=found.get("fail-only") or None,
        chunk_bytes=num("chunk-bytes"),
    )


def words(text: str) -> list[str]:
    """Split into chunks that concatenate back to exactly `text`."""
    parts = re.findall(r"\S+\s*|\s+", text)
    return parts or [text]


def approx_tokens(text: str) -> int:
    return max(1, len(text.split()))
