"""The data of an OpenAI-style SSE stream, decoded once with orjson.

The request still goes through the `openai` SDK (its client's `post`: its auth,
endpoint, headers, timeouts and status errors, returning the streamed HTTP response);
only the per-chunk decoding is ours. `post_sse` does both for the Chat Completions,
Responses and Claude adapters (the `anthropic` client has the same `post`).
The SDK builds a typed object tree for every chunk, which was most of a worker's
CPU per token (docs/benchmarks.md); a relay needs a handful of fields of a dict.
Semantics follow the SDK's `AsyncStream`: `[DONE]` ends the data (the rest of the
body is still read, so the HTTP/1.1 connection can be reused), and a chunk that
carries an `error` object raises `openai.APIError`, as the SDK does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import orjson


@contextlib.asynccontextmanager
async def post_sse(
    client: openai.AsyncOpenAI | anthropic.AsyncAnthropic,
    path: str,
    body: dict[str, Any],
    *,
    openai_errors: bool = True,
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """POST `body` (as orjson bytes) through the SDK client's own `post` (its base URL,
    key, headers, timeouts and status errors) and give the stream's `data:` objects;
    the response goes back to the pool (or is closed, if unread) on the way out."""
    response = await client.post(
        path, cast_to=httpx2.Response, content=orjson.dumps(body), stream=True
    )
    try:
        yield iter_sse_json(response, openai_errors=openai_errors)
    finally:
        await response.aclose()


async def iter_sse_json(
    response: httpx2.Response, *, openai_errors: bool = True
) -> AsyncIterator[dict[str, Any]]:
    """Each `data:` object of the stream. `openai_errors`: an object with an `error` raises
    the SDK's `APIError` (OpenAI's rule); without it, every object is yielded (the Claude
    adapter reads Anthropic's `error` events itself)."""
    pending = b""
    data: list[bytes] = []
    finished = False
    async for chunk in response.aiter_bytes():
        if finished:
            continue  # drain after [DONE]
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
                continue
            if line or not data:
                continue  # `event:`, `id:`, a comment, or a blank line between events
            payload = b"\n".join(data)
            data = []
            if payload.startswith(b"[DONE]"):
                finished = True
                break
            obj = orjson.loads(payload)
            if not isinstance(obj, dict):
                continue
            error = obj.get("error") if openai_errors else None
            if error:
                message = error.get("message") if isinstance(error, dict) else None
                raise openai.APIError(
                    message=message
                    if isinstance(message, str) and message
                    else "An error occurred during streaming",
                    request=response.request,
                    body=error,
                )
            yield obj
