"""A local server speaking provider wire protocols, for tests and keyless `make run`.

- OpenAI Chat Completions: `POST /v1/chat/completions` (and `/openai/v1/...`,
  `/api/v1/...` as Groq and OpenRouter prefix it), `stream: true` as
  `data: <chunk>` lines ending in `data: [DONE]`, with a usage chunk when
  `stream_options.include_usage` is set; errors as `{"error": {...}}` bodies.
- OpenAI Responses: `POST /v1/responses`, `stream: true` as typed SSE events
  (`response.created` … `response.completed`).
- Tool calls (`[[sim:tool=A,B]]`, see `toolcalls.py`): Chat Completions streams
  `delta.tool_calls` fragments and ends with `finish_reason: tool_calls`; Responses
  streams a `function_call` output item with `response.function_call_arguments.*`
  events. Results must come back natively (`role: tool` answering an earlier
  `tool_calls` id; `function_call_output` answering an earlier `function_call`),
  else a 400 as the real APIs answer.
- Anthropic Messages, Gemini and Ollama: see `anthropic.py`, `gemini.py`, `ollama.py`.

An image in the last user message is acknowledged in the echo reply
(`Echo: <text> [image: image/png, 68 bytes]`, see `media.py`).

Every request is recorded (`GET /_sim/requests`), so tests can check what a
provider was sent.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from parley_sim import toolcalls
from parley_sim.media import openai_images, parse_extras, reply_text
from parley_sim.script import Script, approx_tokens, parse_script, words


@dataclass
class SimState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    # Streams whose client went away before the end (cancel tests).
    closed_early: int = 0
    open_streams: int = 0
    # Set whenever a client closes a stream before its end.
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)


STATE = web.AppKey("state", SimState)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
}


def _bad_request(message: str, param: str | None = None) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        },
        status=400,
    )


def _chat_tool_rounds(messages: list[dict[str, Any]]) -> tuple[int, list[str], str | None]:
    """Tool rounds after the last user message, their results, and a protocol error."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    rounds = 0
    results: list[str] = []
    called: set[str] = set()
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            ids = {str(c.get("id")) for c in m.get("tool_calls") or [] if isinstance(c, dict)}
            called |= ids
            if i > last_user and ids:
                rounds += 1
        elif m.get("role") == "tool":
            if str(m.get("tool_call_id")) not in called:
                return (
                    0,
                    [],
                    (
                        "Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'."
                    ),
                )
            if i > last_user:
                results.append(str(m.get("content") or ""))
    return rounds, results, None


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def route_name(path: str) -> str:
    """Which provider a Chat Completions / Responses route stands for."""
    if path.startswith("/openai/"):
        return "groq"
    if path.startswith("/api/"):
        return "openrouter"
    return "openai"


def _should_fail(state: SimState, script: Script, key: str, route: str | None = None) -> bool:
    if script.status is None:
        return False
    if script.fail_only is not None and script.fail_only != route:
        return False
    if script.fail_times is None:
        return True
    state.failures[key] += 1
    return state.failures[key] <= script.fail_times


def _error_response(script: Script) -> web.Response:
    status = script.status or 500
    headers = {"x-request-id": f"req_{secrets.token_hex(6)}"}
    if script.retry_after is not None:
        headers["retry-after"] = script.retry_after
    body = {
        "error": {
            "message": f"Simulated error {status}",
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": None,
            "code": "rate_limit_exceeded" if status == 429 else None,
        }
    }
    return web.json_response(body, status=status, headers=headers)


async def _open_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "x-request-id": f"req_{secrets.token_hex(6)}",
        }
    )
    await resp.prepare(request)
    return resp


def _cut(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _authorize(request: web.Request) -> web.Response | None:
    auth = request.headers.get("Authorization", "")
    if auth.strip() in ("", "Bearer", "Bearer invalid-key"):
        return web.json_response(
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            status=401,
        )
    return None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.json()
    state.requests.append({"api": "chat.completions", "path": request.path, "body": body})
    if (denied := await _authorize(request)) is not None:
        return denied
    messages = body.get("messages") or []
    text = _last_user_text(messages)
    script = parse_script(text)
    if _should_fail(state, script, text, route_name(request.path)):
        return _error_response(script)
    rounds, results, problem = _chat_tool_rounds(messages)
    if problem is not None:
        return _bad_request(problem, "messages")
    tools = {
        str((t.get("function") or {}).get("name")): t.get("function") or {}
        for t in body.get("tools") or []
        if isinstance(t, dict)
    }
    tool_name = toolcalls.next_tool(
        parse_extras(text).tool, rounds, tools, body.get("tool_choice") != "none"
    )
    model = body.get("model", "sim-model")
    cid = f"chatcmpl-{secrets.token_hex(8)}"
    created = int(time.time())
    reply = toolcalls.answer(reply_text(script, openai_images(messages)), results)
    prompt_tokens = sum(approx_tokens(str(m.get("content", ""))) for m in messages)
    call: dict[str, Any] | None = None
    if tool_name is not None:
        args = toolcalls.arguments(
            (tools[tool_name].get("parameters") or {}).get("properties"), script.text, results
        )
        call = {
            "id": f"call_{secrets.token_hex(12)}",
            "type": "function",
            "function": {"name": tool_name, "arguments": orjson.dumps(args).decode()},
        }
        reply = ""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": reply}
        if call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return web.json_response(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if call is not None else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": approx_tokens(reply),
                    "total_tokens": prompt_tokens + approx_tokens(reply),
                },
            }
        )
    resp = await _open_sse(request)
    state.open_streams += 1
    try:
        if script.hang:
            await asyncio.Event().wait()
        await resp.write(chunk({"role": "assistant", "content": ""}))
        if script.reasoning:
            for part in words(script.reasoning_text()):
                await _delay(script)
                await resp.write(chunk({"reasoning": part}))
        if call is not None:
            # The id, type and name first, then the JSON arguments in pieces.
            fn = call["function"]
            head = {**call, "function": {"name": fn["name"], "arguments": ""}}
            await resp.write(chunk({"tool_calls": [{"index": 0, **head}]}))
            arguments = fn["arguments"]
            for start in range(0, len(arguments), 8):
                await _delay(script)
                piece = {"index": 0, "function": {"arguments": arguments[start : start + 8]}}
                await resp.write(chunk({"tool_calls": [piece]}))
        for i, part in enumerate(words(reply) if call is None else []):
            if script.drop_after is not None and i >= script.drop_after:
                _cut(request)
                return resp
            await _delay(script)
            await resp.write(chunk({"content": part}))
        await resp.write(chunk({}, finish="stop" if call is None else "tool_calls"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": approx_tokens(reply),
                    "total_tokens": prompt_tokens + approx_tokens(reply),
                },
            }
            await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        state.closed_early += 1
        state.stream_closed.set()
    except asyncio.CancelledError:
        state.closed_early += 1
        state.stream_closed.set()
        raise
    finally:
        state.open_streams -= 1
    return resp


async def _delay(script: Script) -> None:
    if script.delay_ms:
        await asyncio.sleep(script.delay_ms / 1000)


def _response_tool_rounds(body: dict[str, Any]) -> tuple[int, list[str], str | None]:
    """Function calls after the last user item, their outputs, and a protocol error."""
    inp = body.get("input")
    items = [i for i in inp if isinstance(i, dict)] if isinstance(inp, list) else []
    last_user = max((n for n, i in enumerate(items) if i.get("role") == "user"), default=-1)
    rounds = 0
    results: list[str] = []
    called: set[str] = set()
    for n, item in enumerate(items):
        if item.get("type") == "function_call":
            called.add(str(item.get("call_id")))
            rounds += n > last_user
        elif item.get("type") == "function_call_output":
            call_id = str(item.get("call_id"))
            if call_id not in called:
                return 0, [], f"No tool call found for function call output with call_id {call_id}."
            if n > last_user:
                results.append(str(item.get("output") or ""))
    return rounds, results, None


def _response_text(body: dict[str, Any]) -> tuple[str, int]:
    inp = body.get("input")
    if isinstance(inp, str):
        return inp, approx_tokens(inp)
    text = ""
    total = 0
    for item in inp or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") in ("function_call", "function_call_output"):
            total += approx_tokens(str(item.get("arguments") or item.get("output") or ""))
            continue
        content = item.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        joined = " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        total += approx_tokens(joined)
        if item.get("role") == "user":
            text = joined
    return text, total


async def responses(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.json()
    state.requests.append({"api": "responses", "path": request.path, "body": body})
    if (denied := await _authorize(request)) is not None:
        return denied
    text, prompt_tokens = _response_text(body)
    script = parse_script(text)
    if _should_fail(state, script, text):
        return _error_response(script)
    rounds, results, problem = _response_tool_rounds(body)
    if problem is not None:
        return _bad_request(problem, "input")
    tools = {
        str(t.get("name")): t
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("type") == "function"
    }
    extras = parse_extras(text)
    tool_name = toolcalls.next_tool(extras.tool, rounds, tools, body.get("tool_choice") != "none")
    model = body.get("model", "sim-model")
    rid = f"resp_{secrets.token_hex(8)}"
    msg_id = f"msg_{secrets.token_hex(8)}"
    reply = toolcalls.answer(reply_text(script, openai_images(body.get("input"))), results)
    call_item: dict[str, Any] | None = None
    if tool_name is not None:
        args = toolcalls.arguments(
            (tools[tool_name].get("parameters") or {}).get("properties"), script.text, results
        )
        call_item = {
            "id": f"fc_{secrets.token_hex(8)}",
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": f"call_{secrets.token_hex(12)}",
            "name": tool_name,
        }
        reply = orjson.dumps(args).decode()
    created = int(time.time())
    seq = 0

    def base_response(status: str, output: list[Any], usage: Any = None) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "instructions": body.get("instructions"),
            "error": None,
            "incomplete_details": None,
            "usage": usage,
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
        }

    async def send(resp: web.StreamResponse, etype: str, **fields: Any) -> None:
        nonlocal seq
        obj = {"type": etype, "sequence_number": seq, **fields}
        seq += 1
        await resp.write(f"event: {etype}\n".encode() + b"data: " + orjson.dumps(obj) + b"\n\n")

    resp = await _open_sse(request)
    state.open_streams += 1
    try:
        if script.hang:
            await asyncio.Event().wait()
        await send(resp, "response.created", response=base_response("in_progress", []))
        await send(resp, "response.in_progress", response=base_response("in_progress", []))
        output: list[Any] = []
        out_index = 0
        if script.reasoning:
            rs_id = f"rs_{secrets.token_hex(8)}"
            summary = script.reasoning_text()
            item = {"id": rs_id, "type": "reasoning", "summary": []}
            await send(resp, "response.output_item.added", output_index=0, item=item)
            await send(
                resp,
                "response.reasoning_summary_part.added",
                item_id=rs_id,
                output_index=0,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
            for part in words(summary):
                await _delay(script)
                await send(
                    resp,
                    "response.reasoning_summary_text.delta",
                    item_id=rs_id,
                    output_index=0,
                    summary_index=0,
                    delta=part,
                )
            await send(
                resp,
                "response.reasoning_summary_text.done",
                item_id=rs_id,
                output_index=0,
                summary_index=0,
                text=summary,
            )
            done_item = {**item, "summary": [{"type": "summary_text", "text": summary}]}
            await send(resp, "response.output_item.done", output_index=0, item=done_item)
            output.append(done_item)
            out_index = 1
        if call_item is not None:
            await send(resp, "response.output_item.added", output_index=out_index, item=call_item)
            for start in range(0, len(reply), 8):
                await _delay(script)
                await send(
                    resp,
                    "response.function_call_arguments.delta",
                    item_id=call_item["id"],
                    output_index=out_index,
                    delta=reply[start : start + 8],
                )
            await send(
                resp,
                "response.function_call_arguments.done",
                item_id=call_item["id"],
                output_index=out_index,
                name=call_item["name"],
                arguments=reply,
            )
            done_call = {**call_item, "status": "completed", "arguments": reply}
            await send(resp, "response.output_item.done", output_index=out_index, item=done_call)
            output.append(done_call)
            out_tokens = approx_tokens(reply)
            usage = {
                "input_tokens": prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": out_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt_tokens + out_tokens,
            }
            completed = base_response("completed", output, usage)
            await send(resp, "response.completed", response=completed)
            await resp.write_eof()
            return resp
        item = {
            "id": msg_id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await send(resp, "response.output_item.added", output_index=out_index, item=item)
        await send(
            resp,
            "response.content_part.added",
            item_id=msg_id,
            output_index=out_index,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        )
        for i, part in enumerate(words(reply)):
            if script.drop_after is not None and i >= script.drop_after:
                _cut(request)
                return resp
            if extras.stream_error is not None and i >= 1:
                # A response that fails once started: `response.failed`, its error's
                # `code` as given (`server_error`, `rate_limit_exceeded`, ...).
                failed = base_response("failed", output) | {
                    "error": {"code": extras.stream_error, "message": "Simulated in-stream error"}
                }
                await send(resp, "response.failed", response=failed)
                await resp.write_eof()
                return resp
            await _delay(script)
            await send(
                resp,
                "response.output_text.delta",
                item_id=msg_id,
                output_index=out_index,
                content_index=0,
                delta=part,
                logprobs=[],
            )
        await send(
            resp,
            "response.output_text.done",
            item_id=msg_id,
            output_index=out_index,
            content_index=0,
            text=reply,
            logprobs=[],
        )
        text_part = {"type": "output_text", "text": reply, "annotations": []}
        await send(
            resp,
            "response.content_part.done",
            item_id=msg_id,
            output_index=out_index,
            content_index=0,
            part=text_part,
        )
        done_msg = {**item, "status": "completed", "content": [text_part]}
        await send(resp, "response.output_item.done", output_index=out_index, item=done_msg)
        output.append(done_msg)
        out_tokens = approx_tokens(reply)
        usage = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + out_tokens,
        }
        await send(resp, "response.completed", response=base_response("completed", output, usage))
        await resp.write_eof()
    except ConnectionResetError:
        state.closed_early += 1
        state.stream_closed.set()
    except asyncio.CancelledError:
        state.closed_early += 1
        state.stream_closed.set()
        raise
    finally:
        state.open_streams -= 1
    return resp


async def list_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].requests)


async def clear_requests(request: web.Request) -> web.Response:
    request.app[STATE].requests.clear()
    return web.json_response({"ok": True})


async def search(request: web.Request) -> web.Response:
    """A SearXNG-compatible `GET /search?q=…&format=json`, so that keyless `make run`
    can accept `web: true`. Its results name public pages, which a machine without
    network access cannot fetch: the model then gets a tool error, as it would."""
    if request.query.get("format") != "json":
        return web.Response(status=403, text="format not allowed")
    query = request.query.get("q", "")
    slug = "-".join(query.lower().split())[:60] or "search"
    results = [
        {
            "url": f"https://example.org/{slug}",
            "title": f"About {query} (simulated result)",
            "content": f"A simulated search result for {query!r}.",
            "engine": "parley-sim",
        }
    ]
    return web.json_response({"query": query, "number_of_results": 1, "results": results})


def create_app() -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE] = SimState()
    for prefix in ("/v1", "/openai/v1", "/api/v1"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/responses", responses)
    # Imported here: these modules reuse this one's helpers.
    from parley_sim import anthropic, gemini, ollama

    anthropic.register(app)
    gemini.register(app)
    ollama.register(app)
    app.router.add_get("/search", search)
    app.router.add_get("/_sim/requests", list_requests)
    app.router.add_delete("/_sim/requests", clear_requests)
    return app
