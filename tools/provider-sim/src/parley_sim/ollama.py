"""Ollama API: `POST /api/chat` (plus `GET /api/version` and `GET /api/tags`).

- Streams by default (`stream` absent or true) as NDJSON (`application/x-ndjson`):
  `{"model", "created_at", "message": {"role": "assistant", "content", "thinking"?},
  "done": false}` lines, then one `done: true` line with `done_reason`,
  `prompt_eval_count`, `eval_count` and the `*_duration` fields (nanoseconds).
- Thinking is streamed in `message.thinking` when `think` is true, or when the
  `reasoning` directive is given and `think` is not false.
- Images are raw base64 strings in `messages[].images`.
- No auth, like a local Ollama; a bearer token `invalid-key` (as sent to ollama.com)
  is rejected with 401.
- Tool calls (`[[sim:tool=A,B]]`, see `toolcalls.py`) arrive whole in one line's
  `message.tool_calls` (no ids, arguments as an object); results come back as
  `role: tool` messages.
- Errors are `{"error": "<message>"}` with the HTTP status (and `retry-after` when
  scripted); an in-stream failure (`stream-error=MESSAGE`) is an `{"error": ...}` line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

from parley_sim import toolcalls
from parley_sim.media import Image, parse_extras, reply_text, rfc3339_now, sniff_mime
from parley_sim.script import approx_tokens, parse_script, words
from parley_sim.server import STATE, _cut, _delay, _should_fail

VERSION = "0.12.6"


def error_response(status: int, message: str, *, retry_after: str | None = None) -> web.Response:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    return web.json_response({"error": message}, status=status, headers=headers)


def _images(message: dict[str, Any]) -> list[Image] | None:
    out: list[Image] = []
    for raw in message.get("images") or []:
        try:
            data = base64.b64decode(str(raw), validate=True)
        except (binascii.Error, ValueError):
            return None
        out.append(Image(sniff_mime(data), len(data)))
    return out


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "invalid request body"
    if not body.get("model"):
        return "model is required"
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        return "json: cannot unmarshal messages"
    for m in messages or []:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            return f"invalid role: {m.get('role') if isinstance(m, dict) else m!r}"
    return None


def _tool(body: dict[str, Any], name: str | None) -> dict[str, Any] | None:
    if name is None:
        return None
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and fn.get("name") == name:
            return fn
    return None


def _tool_rounds(msgs: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Assistant tool-call turns after the last user message, and the tool results."""
    last_user = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=-1)
    after = msgs[last_user + 1 :]
    rounds = sum(1 for m in after if m.get("role") == "assistant" and m.get("tool_calls"))
    results = [str(m.get("content") or "") for m in after if m.get("role") == "tool"]
    return rounds, results


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "invalid character in request body")
    state.requests.append({"api": "ollama.chat", "path": request.path, "body": body})
    if request.headers.get("Authorization", "").strip() == "Bearer invalid-key":
        return error_response(401, "unauthorized")
    if (problem := _validate(body)) is not None:
        return error_response(400, problem)

    model = str(body["model"])
    msgs: list[dict[str, Any]] = body.get("messages") or []
    last_user: dict[str, Any] = next((m for m in reversed(msgs) if m.get("role") == "user"), {})
    images = _images(last_user)
    if images is None:
        return error_response(400, "illegal base64 data in images")
    text = str(last_user.get("content") or "")
    script = parse_script(text)
    if _should_fail(state, script, text):
        status = script.status or 500
        return error_response(status, f"simulated error {status}", retry_after=script.retry_after)
    extras = parse_extras(text)
    think = body.get("think")
    thinking = think is True or (script.reasoning and think is not False)
    reasoning = script.reasoning_text() if thinking else ""
    rounds, results = _tool_rounds(msgs)
    declared = [
        str((t.get("function") or {}).get("name"))
        for t in body.get("tools") or []
        if isinstance(t, dict)
    ]
    fn = _tool(body, toolcalls.next_tool(extras.tool, rounds, declared))
    reply = toolcalls.answer(reply_text(script, images), results)
    prompt_tokens = sum(approx_tokens(str(m.get("content") or "")) for m in msgs)
    eval_tokens = approx_tokens(reply) + (approx_tokens(reasoning) if reasoning else 0)

    def line(message: dict[str, Any], **extra: Any) -> bytes:
        obj = {
            "model": model,
            "created_at": rfc3339_now(),
            "message": {"role": "assistant", "content": "", **message},
            "done": False,
            **extra,
        }
        return orjson.dumps(obj) + b"\n"

    final = {
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_250_000_000,
        "load_duration": 50_000_000,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": 200_000_000,
        "eval_count": eval_tokens,
        "eval_duration": 1_000_000_000,
    }
    tool_calls = (
        [
            {
                "function": {
                    "name": fn["name"],
                    "arguments": toolcalls.arguments(
                        (fn.get("parameters") or {}).get("properties"), script.text, results
                    ),
                }
            }
        ]
        if fn is not None
        else None
    )

    if body.get("stream") is False:
        message: dict[str, Any] = {"content": "" if tool_calls else reply}
        if reasoning:
            message["thinking"] = reasoning
        if tool_calls:
            message["tool_calls"] = tool_calls
        return web.Response(body=line(message, **final), content_type="application/json")

    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    state.open_streams += 1
    try:
        if script.hang:
            await asyncio.Event().wait()
        for part in words(reasoning) if reasoning else []:
            await _delay(script)
            await resp.write(line({"thinking": part}))
        if tool_calls:
            await _delay(script)
            await resp.write(line({"tool_calls": tool_calls}))
        else:
            for i, part in enumerate(words(reply)):
                if script.drop_after is not None and i >= script.drop_after:
                    _cut(request)
                    return resp
                if extras.stream_error is not None and i >= 1:
                    await resp.write(orjson.dumps({"error": extras.stream_error}) + b"\n")
                    await resp.write_eof()
                    return resp
                await _delay(script)
                await resp.write(line({"content": part}))
        await resp.write(line({}, **final))
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        state.closed_early += 1
        raise
    finally:
        state.open_streams -= 1
    return resp


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


async def tags(request: web.Request) -> web.Response:
    return web.json_response({"models": []})


def register(app: web.Application) -> None:
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
