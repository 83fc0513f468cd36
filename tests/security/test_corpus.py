"""A fixed corpus of nasty inputs (issue #7, point 6), replayed against every operation
of the OpenAPI document on every `make test`:

- `corpus/bodies/*`: raw request bodies (invalid UTF-8, BOMs, 1e400 and 2**70, NaN,
  NUL and CRLF in values, operators, duplicate keys, truncated and trailing JSON…),
  plus JSON nested 100 000 levels deep (made here; too big to keep as a file);
- `corpus/values.json`: values put into every field of every request body and into
  every query parameter;
- `corpus/paths.txt`: raw (already percent-encoded) path segments put into every path
  parameter;
- `corpus/headers.txt`: raw header lines (JSON strings, so CR and LF can be written)
  sent over a plain socket, since an HTTP client refuses to send most of them.

Every answer must be below 500, a JSON `{"error", …}` body when it is an error the
application made, and no answer may carry a header the input tried to inject.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import pytest
from parley_gateway import openapi
from yarl import URL

from tests.support.history import seed_turns, store_of, uid
from tests.support.stack import SERVICE_TOKEN, Stack

pytestmark = [pytest.mark.security, pytest.mark.timeout(240)]

CORPUS = Path(__file__).parent / "corpus"
DEPTH = 100_000
INJECTED = ("set-cookie", "x-injected")


def _bodies() -> dict[str, bytes]:
    found = {p.name: p.read_bytes() for p in sorted((CORPUS / "bodies").iterdir())}
    found["deep-array"] = b"[" * DEPTH + b"]" * DEPTH
    found["deep-object"] = b'{"text": ' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"}"
    found["deep-unclosed"] = b'{"text": ' + b"[" * DEPTH
    return found


BODIES = _bodies()
VALUES: list[Any] = json.loads((CORPUS / "values.json").read_text())
PATHS = (CORPUS / "paths.txt").read_text().splitlines()
HEADERS: list[str] = [
    json.loads(line) for line in (CORPUS / "headers.txt").read_text().splitlines()
]


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    doc: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method} {self.template}"

    def path(self, values: dict[str, str]) -> str:
        out = self.template
        for name, value in values.items():
            out = out.replace(f"{{{name}}}", value)
        return out

    def parameters(self, where: str) -> list[str]:
        item = openapi.document()["paths"][self.template]
        params = [*item.get("parameters", []), *self.doc.get("parameters", [])]
        names = []
        for param in params:
            if "$ref" in param:
                param = openapi.document()["components"]["parameters"][
                    param["$ref"].rsplit("/", 1)[1]
                ]
            if param["in"] == where:
                names.append(param["name"])
        return names

    def body_fields(self) -> list[str]:
        body = self.doc.get("requestBody")
        if body is None:
            return []
        schema = body["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = openapi.document()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return sorted(schema.get("properties", {}))


def operations() -> list[Operation]:
    """Every documented operation; deletions last, so the others meet live objects."""
    found = [
        Operation(method.upper(), path, op)
        for path, item in openapi.document()["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    ]
    return sorted(found, key=lambda op: op.method == "DELETE")


# A valid body for each operation that takes one, so a nasty field is the only fault.
BASE_BODIES: dict[str, dict[str, Any]] = {
    "chat": {"text": "hi", "provider": "groq"},
    "chatStream": {"text": "hi", "provider": "groq"},
    "updateConversation": {"title": "t"},
    "truncateConversation": {"keep_count": 5},
    "createFolder": {"name": "n"},
    "renameFolder": {"name": "n"},
    "putSettings": {"default_provider": None},
}


@dataclass
class Target:
    stack: Stack
    user: str
    conv: str
    folder: str

    @property
    def auth(self) -> dict[str, str]:
        return self.stack.auth(self.user)

    def real_path(self, op: Operation) -> str:
        return op.path(
            {
                "conversation_id": quote(self.conv, safe=""),
                "folder_id": quote(self.folder, safe=""),
                "job_id": "job-" + "0" * 24,
            }
        )


@pytest.fixture
async def target(open_stack: Stack) -> Target:
    user = uid("corpus")
    conv = await seed_turns(store_of(open_stack), user, 4)
    async with open_stack.http.post(
        f"{open_stack.url}/api/chat/folders", json={"name": "f"}, headers=open_stack.auth(user)
    ) as resp:
        folder = (await resp.json())["id"]
    return Target(open_stack, user, conv, folder)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def check(answer: Answer, what: str, *, protocol_level: bool = False) -> None:
    """No 5xx, no injected header, and a JSON error body where the application answered."""
    assert answer.status < 500, (what, answer.status, answer.body[:300])
    names = {k.lower() for k in answer.headers}
    assert not names & set(INJECTED), (what, answer.headers)
    if answer.status >= 400 and not protocol_level:
        assert answer.headers.get("Content-Type", "").startswith("application/json"), what
        assert "error" in orjson.loads(answer.body), what


async def send(
    t: Target,
    method: str,
    path: str,
    *,
    data: bytes | None = None,
    params: dict[str, str] | None = None,
) -> Answer:
    headers = t.auth | ({"Content-Type": "application/json"} if data is not None else {})
    async with t.stack.http.request(
        method, URL(f"{t.stack.url}{path}", encoded=True), data=data, params=params, headers=headers
    ) as resp:
        return Answer(resp.status, dict(resp.headers), await resp.read())


async def test_every_operation_is_in_the_corpus_run():
    labels = {op.label for op in operations()}
    assert len(labels) >= 20
    assert {op.doc["operationId"] for op in operations() if "requestBody" in op.doc} == set(
        BASE_BODIES
    )


async def test_nasty_bodies_to_every_operation(target: Target):
    for op in operations():
        for name, raw in BODIES.items():
            answer = await send(target, op.method, target.real_path(op), data=raw)
            check(answer, f"{op.label} ← {name}")


def _field_cases() -> Iterator[tuple[Operation, str, Any]]:
    for op in operations():
        for field in op.body_fields():
            for value in VALUES:
                yield op, field, value


async def test_nasty_values_in_every_body_field(target: Target):
    cases = list(_field_cases())
    assert len(cases) > 500
    for op, field, value in cases:
        body = BASE_BODIES[op.doc["operationId"]] | {field: value}
        if field == "web" and value is True:
            continue  # a web-search turn; its own tests cover it
        raw = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS) if _jsonable(value) else None
        if raw is None:
            raw = json.dumps(body).encode()
        answer = await send(target, op.method, target.real_path(op), data=raw)
        check(answer, f"{op.label} ← {field}={value!r:.60}")


def _jsonable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _as_query(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


async def test_nasty_values_in_every_query_parameter(target: Target):
    for op in operations():
        for name in op.parameters("query"):
            for value in VALUES:
                params = {name: _as_query(value)}
                if name != "conversation_id" and "conversation_id" in op.parameters("query"):
                    params["conversation_id"] = target.conv
                answer = await send(target, op.method, target.real_path(op), params=params)
                check(answer, f"{op.label} ?{name}={value!r:.60}")


async def test_nasty_path_segments_in_every_path_parameter(target: Target):
    for op in operations():
        for name in op.parameters("path"):
            for segment in PATHS:
                values = {
                    "conversation_id": quote(target.conv, safe=""),
                    "folder_id": quote(target.folder, safe=""),
                    "job_id": "job-" + "0" * 24,
                } | {name: segment}
                data = None
                if "requestBody" in op.doc:
                    data = orjson.dumps(BASE_BODIES[op.doc["operationId"]])
                answer = await send(target, op.method, op.path(values), data=data)
                check(answer, f"{op.label} with {name}={segment[:60]}")


async def raw_request(url: str, request: bytes) -> Answer:
    """One request over a plain socket, exactly as given; the answer as parsed."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(30):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip()] = value.strip()
    for injected in INJECTED:
        assert f"\r\n{injected}".encode() not in head.lower(), head
    return Answer(status, headers, body)


async def test_nasty_headers_to_every_operation(target: Target):
    token = target.stack.token(target.user)
    for op in operations():
        path = target.real_path(op)
        body = b""
        if "requestBody" in op.doc:
            body = orjson.dumps(BASE_BODIES[op.doc["operationId"]])
        for header in HEADERS:
            lines = [
                f"{op.method} {path} HTTP/1.1",
                "Host: 127.0.0.1",
                f"Authorization: Bearer {token}",
                "Connection: close",
                header,
            ]
            if body and not header.lower().startswith(("content-length", "transfer-encoding")):
                lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
            request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
            answer = await raw_request(target.stack.url, request)
            # A request the HTTP parser itself refuses gets aiohttp's plain 400.
            check(answer, f"{op.label} with {header[:60]!r}", protocol_level=True)


def test_the_json_parser_refuses_deep_nesting_without_blowing_the_stack():
    for raw in (BODIES["deep-array"], BODIES["deep-object"]):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)


async def test_history_refuses_nasty_bodies_too(open_stack: Stack):
    """Defense in depth: history's own parsers, behind the gateway's, with the credential."""
    headers = {
        "Authorization": f"Bearer {SERVICE_TOKEN}",
        "X-Parley-User": uid(),
        "Content-Type": "application/json",
    }
    for path in ("/internal/v1/folders", "/internal/v1/turns"):
        for name, raw in BODIES.items():
            async with open_stack.http.post(
                f"{open_stack.history_url}{path}", data=raw, headers=headers
            ) as resp:
                assert resp.status < 500, (path, name, resp.status)
