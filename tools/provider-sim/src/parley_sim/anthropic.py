"""Anthropic Messages API: `POST /v1/messages`.

- Auth by `x-api-key`, or `Authorization: Bearer` as anthropic 2.x sends it (the key
  `invalid-key` is rejected with 401); `anthropic-version` is required.
- `stream: true` answers with typed SSE events: `message_start`, then per content
  block `content_block_start` / `content_block_delta` / `content_block_stop`
  (`thinking` blocks with `thinking_delta` and a closing `signature_delta`;
  `text` blocks with `text_delta`; `tool_use` blocks with `input_json_delta`),
  a `ping`, `message_delta` (stop reason and usage), `message_stop`.
- Thinking is streamed when the `reasoning` directive is given or the request
  enables `thinking`.
- Tool calls (`[[sim:tool=A,B]]`, see `toolcalls.py`; none when `tool_choice` is
  `none`). Checked as the API does: `tool_use`/`tool_result` blocks need `tools`;
  each `tool_result` answers a `tool_use` of the assistant turn just before it;
  with thinking enabled, an assistant turn with `tool_use` must start with its
  (signed) thinking block.
- Errors are `{"type": "error", "error": {"type": ..., "message": ...}}` with the
  HTTP status, a `request-id` header and `retry-after` when scripted; an in-stream
  failure (`stream-error=TYPE`) is an `error` event.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

import orjson
from aiohttp import web

from parley_sim import toolcalls
from parley_sim.media import Image, decoded_size, parse_extras, reply_text
from parley_sim.script import Script, approx_tokens, parse_script, words
from parley_sim.server import STATE, _cut, _delay, _should_fail

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def error_response(
    status: int, message: str, *, retry_after: str | None = None, etype: str | None = None
) -> web.Response:
    rid = _request_id()
    headers = {"request-id": rid}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if status == 429 or status >= 500:
        headers["x-should-retry"] = "true"
    body = {
        "type": "error",
        "error": {"type": etype or ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": rid,
    }
    return web.json_response(body, status=status, headers=headers)


def _block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return ""
    if block.get("type") == "text":
        return str(block.get("text", ""))
    if block.get("type") == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(_block_text(b) for b in content)
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(t for t in (_block_text(b) for b in content) if t)
    return ""


def _images(content: Any) -> list[Image]:
    out: list[Image] = []
    if not isinstance(content, list):
        return out
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "image":
            continue
        source = block.get("source") or {}
        if source.get("type") == "base64":
            out.append(
                Image(str(source.get("media_type")), decoded_size(str(source.get("data", ""))))
            )
    return out


def _system_text(system: Any) -> str:
    return _content_text(system) if system is not None else ""


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body: Input should be an object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        if content == "" or content == []:
            return f"messages.{i}: all messages must have non-empty content"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if budget >= max_tokens:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
    return None


def _blocks(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _is_tool_results(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and all(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _tool_rounds(body: dict[str, Any]) -> tuple[int, list[str], str | None]:
    """Tool rounds after the question (the last user turn that is not tool results),
    their results, and a protocol error."""
    msgs: list[dict[str, Any]] = body["messages"]
    question = max(
        (i for i, m in enumerate(msgs) if m["role"] == "user" and not _is_tool_results(m)),
        default=-1,
    )
    thinking = body.get("thinking")
    thinking_on = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    uses_tools = any(_blocks(m, "tool_use") or _blocks(m, "tool_result") for m in msgs)
    if uses_tools and not body.get("tools"):
        return 0, [], "Requests which include `tool_use` or `tool_result` blocks must define tools."
    rounds = 0
    results: list[str] = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and _blocks(m, "tool_use"):
            first = m["content"][0] if isinstance(m["content"], list) else {}
            if thinking_on and first.get("type") not in ("thinking", "redacted_thinking"):
                return (
                    0,
                    [],
                    (
                        f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                        f"but found `{first.get('type')}`. When `thinking` is enabled, a final "
                        "`assistant` message must start with a thinking block."
                    ),
                )
            if any(not b.get("signature") for b in _blocks(m, "thinking")):
                return 0, [], f"messages.{i}: thinking block is missing its signature"
            rounds += i > question
        for block in _blocks(m, "tool_result"):
            before = msgs[i - 1] if i > 0 else {}
            asked = {b.get("id") for b in _blocks(before, "tool_use")}
            if before.get("role") != "assistant" or block.get("tool_use_id") not in asked:
                return (
                    0,
                    [],
                    (
                        f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` "
                        "blocks. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message."
                    ),
                )
            if i > question:
                results.append(_block_text(block))
    return rounds, results, None


def _find_tool(body: dict[str, Any], name: str | None) -> dict[str, Any] | None:
    if name is None:
        return None
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("name") == name:
            return tool
    return None


async def messages(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "There was an error parsing the body of your request.")
    state.requests.append(
        {
            "api": "anthropic.messages",
            "path": request.path,
            "body": body,
            "headers": {
                k: request.headers[k]
                for k in ("anthropic-version", "anthropic-beta")
                if k in request.headers
            },
        }
    )
    # Older SDKs send the key as `x-api-key`; anthropic 2.x sends `Authorization: Bearer`.
    bearer = request.headers.get("Authorization", "")
    key = request.headers.get("x-api-key") or bearer.removeprefix("Bearer").strip()
    if not key:
        return error_response(401, "x-api-key header is required")
    if key == "invalid-key":
        return error_response(401, "invalid x-api-key")
    if "anthropic-version" not in request.headers:
        return error_response(400, "anthropic-version: header is required")
    if (problem := _validate(body)) is not None:
        return error_response(400, problem)

    msgs: list[dict[str, Any]] = body["messages"]
    last_user: dict[str, Any] = next(
        (m for m in reversed(msgs) if m.get("role") == "user" and not _is_tool_results(m)), {}
    )
    text = _content_text(last_user.get("content"))
    script = parse_script(text)
    if _should_fail(state, script, text):
        status = script.status or 500
        return error_response(status, f"Simulated error {status}", retry_after=script.retry_after)
    extras = parse_extras(text)
    thinking = body.get("thinking")
    think = script.reasoning or (
        isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    )
    rounds, results, problem = _tool_rounds(body)
    if problem is not None:
        return error_response(400, problem)
    choice = body.get("tool_choice")
    allowed = not (isinstance(choice, dict) and choice.get("type") == "none")
    declared = [str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict)]
    tool = _find_tool(body, toolcalls.next_tool(extras.tool, rounds, declared, allowed))
    reply = toolcalls.answer(reply_text(script, _images(last_user.get("content"))), results)
    input_tokens = approx_tokens(_system_text(body.get("system"))) + sum(
        approx_tokens(_content_text(m.get("content"))) for m in msgs
    )
    chunks = words(reply)
    stop_reason = "tool_use" if tool is not None else "end_turn"
    if tool is None and len(chunks) > body["max_tokens"]:
        chunks = chunks[: body["max_tokens"]]
        stop_reason = "max_tokens"
    reasoning = script.reasoning_text() if think else ""
    signature = base64.b64encode(secrets.token_bytes(48)).decode()
    tool_id = f"toolu_{secrets.token_hex(12)}"
    tool_json = ""
    if tool is not None:
        props = (tool.get("input_schema") or {}).get("properties")
        tool_json = orjson.dumps(toolcalls.arguments(props, script.text, results)).decode()
    output_tokens = (approx_tokens(reasoning) if think else 0) + (
        approx_tokens(tool_json) if tool else approx_tokens("".join(chunks))
    )
    start_usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
        "service_tier": "standard",
    }
    message = {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    final_usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }

    if not body.get("stream"):
        content: list[dict[str, Any]] = []
        if think:
            content.append({"type": "thinking", "thinking": reasoning, "signature": signature})
        if tool is not None:
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_id,
                    "name": tool["name"],
                    "input": orjson.loads(tool_json),
                }
            )
        else:
            content.append({"type": "text", "text": "".join(chunks)})
        done = {
            **message,
            "content": content,
            "stop_reason": stop_reason,
            "usage": {**start_usage, "output_tokens": output_tokens},
        }
        return web.json_response(done, headers={"request-id": _request_id()})

    stream = _EventStream(request, script)
    await stream.open()
    state.open_streams += 1
    try:
        if script.hang:
            await asyncio.Event().wait()
        await stream.send("message_start", message=message)
        if think:
            await stream.start({"type": "thinking", "thinking": "", "signature": ""})
            for part in words(reasoning):
                await stream.delta({"type": "thinking_delta", "thinking": part})
            await stream.delta({"type": "signature_delta", "signature": signature}, delay=False)
            await stream.stop()
        if tool is not None:
            await stream.start(
                {"type": "tool_use", "id": tool_id, "name": tool["name"], "input": {}}
            )
            # The API opens with an empty fragment, then streams the JSON in pieces.
            pieces = ["", *(tool_json[i : i + 8] for i in range(0, len(tool_json), 8))]
            for piece in pieces:
                await stream.delta({"type": "input_json_delta", "partial_json": piece})
            await stream.stop()
        else:
            await stream.start({"type": "text", "text": ""})
            for i, part in enumerate(chunks):
                if script.drop_after is not None and i >= script.drop_after:
                    _cut(request)
                    return stream.resp
                if extras.stream_error is not None and i >= 1:
                    error = {"type": extras.stream_error, "message": "Simulated in-stream error"}
                    await stream.send("error", error=error)
                    await stream.resp.write_eof()
                    return stream.resp
                await stream.delta({"type": "text_delta", "text": part})
            await stream.stop()
        await stream.send(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage=final_usage,
        )
        await stream.send("message_stop")
        await stream.resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        state.closed_early += 1
        raise
    finally:
        state.open_streams -= 1
    return stream.resp


class _EventStream:
    """Anthropic's SSE framing: `event: <type>` then `data: <json with the same type>`."""

    def __init__(self, request: web.Request, script: Script) -> None:
        self.request = request
        self.script = script
        self.resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": _request_id(),
            }
        )
        self.index = -1
        self._pinged = False

    async def open(self) -> None:
        await self.resp.prepare(self.request)

    async def send(self, etype: str, **fields: Any) -> None:
        data = orjson.dumps({"type": etype, **fields})
        await self.resp.write(f"event: {etype}\n".encode() + b"data: " + data + b"\n\n")

    async def start(self, block: dict[str, Any]) -> None:
        self.index += 1
        await self.send("content_block_start", index=self.index, content_block=block)
        if not self._pinged:
            self._pinged = True
            await self.send("ping")

    async def delta(self, delta: dict[str, Any], *, delay: bool = True) -> None:
        if delay:
            await _delay(self.script)
        await self.send("content_block_delta", index=self.index, delta=delta)

    async def stop(self) -> None:
        await self.send("content_block_stop", index=self.index)


def register(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
