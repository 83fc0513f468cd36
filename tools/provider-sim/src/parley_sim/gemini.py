"""Gemini API: `POST /{v1,v1beta}/models/{model}:streamGenerateContent?alt=sse`.

Also the non-streaming `:generateContent`.

- Auth by `x-goog-api-key` header or `key` query parameter. No key is a 403
  `PERMISSION_DENIED`; the key `invalid-key` is a 400 `INVALID_ARGUMENT` with an
  `ErrorInfo` reason `API_KEY_INVALID`, as the real API answers.
- A stream is `data: <GenerateContentResponse>` SSE events: `candidates[0].content.parts`
  with `thought: true` parts (reasoning, when the `reasoning` directive is given and
  `thinkingConfig.includeThoughts` is set), then text parts, the last one with
  `finishReason: STOP`; every chunk has `usageMetadata`, `modelVersion`, `responseId`.
- Only `alt=sse` streams (what the SDKs ask for), not the JSON-array form.
- Tool calls (`[[sim:tool=A,B]]`, see `toolcalls.py`; none when
  `toolConfig.functionCallingConfig.mode` is `NONE`) are `functionCall` parts
  carrying a `thoughtSignature`; a model turn sent back without the signature on
  its `functionCall` parts is a 400, as Gemini 3 answers.
- Errors are `{"error": {"code", "message", "status", "details"}}`; a scripted
  `retry-after` is sent both as a header and as a `google.rpc.RetryInfo` detail. An
  in-stream failure (`stream-error=STATUS`) is a `data: {"error": ...}` event.
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
from parley_sim.script import approx_tokens, parse_script, words
from parley_sim.server import STATE, _cut, _delay, _should_fail

STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
CODES = {status: code for code, status in STATUSES.items()}


def error_body(
    code: int, message: str, *, status: str | None = None, details: list[Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or STATUSES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def error_response(
    code: int,
    message: str,
    *,
    retry_after: str | None = None,
    details: list[Any] | None = None,
) -> web.Response:
    headers: dict[str, str] = {}
    details = list(details or [])
    if retry_after is not None:
        headers["retry-after"] = retry_after
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"}
        )
    body = error_body(code, message, details=details)
    return web.json_response(body, status=code, headers=headers)


def _get(d: Any, camel: str, snake: str) -> Any:
    """Proto3 JSON accepts both spellings of a field name."""
    if not isinstance(d, dict):
        return None
    return d[camel] if camel in d else d.get(snake)


def _parts_text(parts: Any) -> str:
    texts: list[str] = []
    for p in parts or []:
        if not isinstance(p, dict) or _get(p, "thought", "thought"):
            continue
        if isinstance(p.get("text"), str):
            texts.append(p["text"])
        elif (fr := _get(p, "functionResponse", "function_response")) is not None:
            texts.append(orjson.dumps(fr.get("response")).decode())
    return " ".join(texts)


def _images(parts: Any) -> list[Image]:
    out: list[Image] = []
    for p in parts or []:
        inline = _get(p, "inlineData", "inline_data")
        if isinstance(inline, dict):
            mime = str(_get(inline, "mimeType", "mime_type"))
            size = decoded_size(str(inline.get("data", "")), urlsafe=True)
            out.append(Image(mime, size))
    return out


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, c in enumerate(contents):
        if not isinstance(c, dict) or c.get("role", "user") not in ("user", "model", "function"):
            return f"Please use a valid role: user, model. (contents[{i}])"
        if not c.get("parts"):
            return f"* GenerateContentRequest.contents[{i}].parts: must not be empty."
    return None


def _function(body: dict[str, Any], name: str | None) -> dict[str, Any] | None:
    if name is None:
        return None
    for tool in body.get("tools") or []:
        for decl in _get(tool, "functionDeclarations", "function_declarations") or []:
            if isinstance(decl, dict) and decl.get("name") == name:
                return decl
    return None


def _function_args(decl: dict[str, Any], text: str, results: list[str]) -> dict[str, Any]:
    schema = (
        decl.get("parameters") or _get(decl, "parametersJsonSchema", "parameters_json_schema") or {}
    )
    return toolcalls.arguments(schema.get("properties"), text, results)


def _has_text(content: dict[str, Any]) -> bool:
    return any(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content["parts"])


def _response_text(fr: Any) -> str:
    response = fr.get("response") if isinstance(fr, dict) else None
    if isinstance(response, dict):
        for key in ("output", "error", "result"):
            if isinstance(response.get(key), str):
                return str(response[key])
    return orjson.dumps(response).decode()


def _tool_rounds(contents: list[dict[str, Any]]) -> tuple[int, list[str], str | None]:
    """Model turns after the question (the last user turn with text), the function
    responses after it, and a protocol error."""
    question = max(
        (i for i, c in enumerate(contents) if c.get("role", "user") == "user" and _has_text(c)),
        default=-1,
    )
    rounds = 0
    results: list[str] = []
    for i, c in enumerate(contents[question + 1 :], question + 1):
        parts = [p for p in c["parts"] if isinstance(p, dict)]
        if c.get("role") == "model":
            calls = [p for p in parts if _get(p, "functionCall", "function_call") is not None]
            if calls and not _get(calls[0], "thoughtSignature", "thought_signature"):
                return (
                    0,
                    [],
                    (
                        f"Function call is missing a thought_signature in functionCall parts. "
                        f"This is required for tools to work correctly, and missing "
                        f"thought_signature may lead to degraded model performance. "
                        f"(contents[{i}].parts[0])"
                    ),
                )
            rounds += bool(calls)
        for p in parts:
            fr = _get(p, "functionResponse", "function_response")
            if fr is not None:
                results.append(_response_text(fr))
    return rounds, results, None


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    name = request.match_info["name"]
    model, _, method = name.partition(":")
    if method not in ("streamGenerateContent", "generateContent"):
        return error_response(404, f"Method not found: {method or name}")
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "Invalid JSON payload received.")
    state.requests.append(
        {
            "api": f"gemini.{method}",
            "path": request.path,
            "query": dict(request.query),
            "body": body,
        }
    )
    key = request.headers.get("x-goog-api-key") or request.query.get("key", "")
    if not key:
        return error_response(
            403,
            "Method doesn't allow unregistered callers (callers without established identity)."
            " Please use API Key or other form of API consumer identity to call this API.",
        )
    if key == "invalid-key":
        return error_response(
            400,
            "API key not valid. Please pass a valid API key.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        )
    if (problem := _validate(body)) is not None:
        return error_response(400, problem)

    contents: list[dict[str, Any]] = body["contents"]
    users = [c for c in contents if c.get("role", "user") == "user" and _has_text(c)]
    last_user: dict[str, Any] = users[-1] if users else {}
    text = _parts_text(last_user.get("parts"))
    script = parse_script(text)
    if _should_fail(state, script, text):
        status = script.status or 500
        return error_response(status, f"Simulated error {status}", retry_after=script.retry_after)
    extras = parse_extras(text)
    config = _get(body, "generationConfig", "generation_config") or {}
    thinking = _get(config, "thinkingConfig", "thinking_config") or {}
    show_thoughts = bool(_get(thinking, "includeThoughts", "include_thoughts"))
    reasoning = script.reasoning_text() if script.reasoning else ""
    rounds, results, problem = _tool_rounds(contents)
    if problem is not None:
        return error_response(400, problem)
    tool_config = _get(body, "toolConfig", "tool_config") or {}
    calling = _get(tool_config, "functionCallingConfig", "function_calling_config") or {}
    allowed = str(calling.get("mode", "AUTO")).upper() != "NONE"
    declared = [
        str(d.get("name"))
        for t in body.get("tools") or []
        for d in _get(t, "functionDeclarations", "function_declarations") or []
        if isinstance(d, dict)
    ]
    decl = _function(body, toolcalls.next_tool(extras.tool, rounds, declared, allowed))
    reply = toolcalls.answer(reply_text(script, _images(last_user.get("parts"))), results)
    chunks = words(reply)
    system = _get(body, "systemInstruction", "system_instruction")
    prompt_tokens = sum(approx_tokens(_parts_text(c.get("parts"))) for c in contents)
    if system is not None:
        prompt_tokens += approx_tokens(_parts_text(system.get("parts")))
    thoughts_tokens = approx_tokens(reasoning) if reasoning else 0
    model_version = model.removeprefix("models/")
    response_id = secrets.token_urlsafe(16)

    def usage(candidates_tokens: int | None) -> dict[str, Any]:
        u: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "totalTokenCount": prompt_tokens + (candidates_tokens or 0) + thoughts_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
        }
        if candidates_tokens is not None:
            u["candidatesTokenCount"] = candidates_tokens
        if thoughts_tokens:
            u["thoughtsTokenCount"] = thoughts_tokens
        return u

    def chunk(parts: list[dict[str, Any]], finish: bool, candidates_tokens: int | None) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        obj = {
            "candidates": [candidate],
            "usageMetadata": usage(candidates_tokens),
            "modelVersion": model_version,
            "responseId": response_id,
        }
        return orjson.dumps(obj)

    if decl is not None:
        args = _function_args(decl, script.text, results)
        answer_parts: list[dict[str, Any]] = [
            {
                "functionCall": {"name": decl["name"], "args": args},
                "thoughtSignature": base64.b64encode(secrets.token_bytes(24)).decode(),
            }
        ]
    else:
        answer_parts = [{"text": part} for part in chunks]
    out_tokens = approx_tokens(reply) if decl is None else 1

    if method == "generateContent":
        parts = [{"text": reasoning, "thought": True}] if reasoning and show_thoughts else []
        if decl is None:
            parts.append({"text": reply})
        else:
            parts.extend(answer_parts)
        return web.Response(body=chunk(parts, True, out_tokens), content_type="application/json")

    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)

    async def send(data: bytes) -> None:
        await resp.write(b"data: " + data + b"\r\n\r\n")

    state.open_streams += 1
    try:
        if script.hang:
            await asyncio.Event().wait()
        if reasoning and show_thoughts:
            for part in words(reasoning):
                await _delay(script)
                await send(chunk([{"text": part, "thought": True}], False, None))
        last = len(answer_parts) - 1
        for i, part_obj in enumerate(answer_parts):
            if script.drop_after is not None and i >= script.drop_after:
                _cut(request)
                return resp
            if extras.stream_error is not None and i >= 1:
                name = extras.stream_error
                err = error_body(CODES.get(name, 500), "Simulated in-stream error", status=name)
                await send(orjson.dumps(err))
                await resp.write_eof()
                return resp
            await _delay(script)
            done = i == last
            await send(chunk([part_obj], done, out_tokens if done else None))
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        state.closed_early += 1
        raise
    finally:
        state.open_streams -= 1
    return resp


def register(app: web.Application) -> None:
    for version in ("v1", "v1beta"):
        app.router.add_post(f"/{version}/models/{{name}}", handle)
