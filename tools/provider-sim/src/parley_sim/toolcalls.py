"""Tool calls in every simulated protocol: which tool a round calls, with what, and the answer.

`[[sim:tool=A,B,…]]` in the last user *text* message is a chain: round 0 (no tool
results after that message yet) calls A, round 1 (one round of results) calls B,
and so on; a round past the end of the chain answers in text. A name the request
does not declare, or a request that forbids tools (`tool_choice` none, Gemini
mode `NONE`, or no tools at all), answers in text instead.

Arguments: the first string parameter of the declared schema gets the user's
text (directives removed), except a parameter named `url`, which gets the first
URL in the latest tool result (so `tool=web_search,web_fetch` reads the first
search hit), or the user's text when there is none.

The answer after tool results quotes the latest one, whitespace collapsed and cut
to `QUOTE_CHARS`: `Echo: <text> [tool result: <quote>]`, so a test sees that the
result reached the model in the protocol's native form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

QUOTE_CHARS = 600
_URL = re.compile(r"https?://[^\s\"'<>\]\)]+")


def chain(tool: str | None) -> list[str]:
    return [t.strip() for t in (tool or "").split(",") if t.strip()]


def next_tool(
    tool: str | None, rounds: int, declared: Iterable[str], allowed: bool = True
) -> str | None:
    """The tool to call in this round, or None to answer in text."""
    names = chain(tool)
    if not allowed or rounds >= len(names):
        return None
    name = names[rounds]
    return name if name in set(declared) else None


def arguments(properties: Any, text: str, results: list[str]) -> dict[str, Any]:
    if not isinstance(properties, dict):
        return {}
    for name, prop in properties.items():
        kind = str(prop.get("type", "string")).lower() if isinstance(prop, dict) else ""
        if kind != "string":
            continue
        if name == "url":
            found = _URL.search(results[-1]) if results else None
            return {name: found.group(0) if found else text}
        return {name: text}
    return {}


def answer(reply: str, results: list[str]) -> str:
    if not results:
        return reply
    quote = " ".join(results[-1].split())[:QUOTE_CHARS]
    return f"{reply} [tool result: {quote}]"
