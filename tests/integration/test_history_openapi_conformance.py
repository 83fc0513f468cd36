"""Real answers of the conversation endpoints conform to the served OpenAPI document.

A small checker for the JSON Schema subset the document uses ($ref, type, required,
properties, additionalProperties, items, const, enum, oneOf, pattern, minimum), so
that a field added to a response without documenting it (or the reverse) fails here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.history import Api, seed_turns, seg, store_of, uid
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def check(spec: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$") -> None:
    if "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        check(spec, node, value, where)
        return
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                check(spec, option, value, where)
                matches += 1
            except AssertionError:
                pass
        assert matches == 1, f"{where}: {value!r} matches {matches} of oneOf"
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in enum"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_is_type(value, t) for t in types), f"{where}: {value!r} is not {types}"
    if isinstance(value, str) and "pattern" in schema:
        assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
    if isinstance(value, int) and "minimum" in schema:
        assert value >= schema["minimum"], where
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{where}: missing {name}"
        props = schema.get("properties", {})
        for name, item in value.items():
            if name in props:
                check(spec, props[name], item, f"{where}.{name}")
            else:
                assert schema.get("additionalProperties", True) is not False, (
                    f"{where}: undocumented field {name}"
                )
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check(spec, schema["items"], item, f"{where}[{i}]")


async def test_answers_conform_to_the_served_document(stack: Stack):
    api = Api(stack)
    status, spec = await api.get("/api/openapi.json", None)
    assert status == 200 and spec["openapi"] == "3.1.0"
    user = uid()
    res = await stack.chat(user, {"text": "conform", "provider": "groq"})
    conv = res.last.data["conversation_id"]
    await seed_turns(store_of(stack), user, 3, conversation_id=conv)
    _, folder_created = await api.post("/api/chat/folders", user, json={"name": "Work"})
    cpath = f"/api/chat/conversations/{seg(conv)}"
    fpath = f"/api/chat/folders/{folder_created['id']}"

    def response(path: str, method: str, status: str) -> dict[str, Any]:
        schema: dict[str, Any] = spec["paths"][path][method]["responses"][status]
        if "$ref" in schema:
            schema = spec["components"]["responses"][schema["$ref"].rsplit("/", 1)[-1]]
        return dict(schema["content"]["application/json"]["schema"])

    conv_t = "/api/chat/conversations/{conversation_id}"
    calls: list[tuple[str, str, str, Any, dict[str, Any]]] = [
        ("get", "/api/chat/conversations", "/api/chat/conversations", None, {"limit": "1"}),
        ("get", "/api/chat/messages", "/api/chat/messages", None, {"conversation_id": conv}),
        ("get", conv_t, cpath, None, {}),
        ("patch", conv_t, cpath, {"folder_id": folder_created["id"]}, {}),
        ("get", "/api/chat/folders", "/api/chat/folders", None, {}),
        ("patch", "/api/chat/folders/{folder_id}", fpath, {"name": "Job"}, {}),
        ("put", "/api/me/settings", "/api/me/settings", {"default_provider": "groq"}, {}),
        ("get", "/api/me/settings", "/api/me/settings", None, {}),
        ("post", f"{conv_t}/truncate", f"{cpath}/truncate", {"keep_count": 2}, {}),
        ("delete", "/api/chat/folders/{folder_id}", fpath, None, {}),
        ("delete", conv_t, cpath, None, {}),
        ("get", conv_t, cpath, None, {}),  # now 404
        ("get", "/api/chat/conversations", "/api/chat/conversations", None, {"limit": "0"}),
    ]
    seen = set()
    for method, template, path, body, params in calls:
        kw: dict[str, Any] = {"params": params}
        if body is not None:
            kw["json"] = body
        status, answer = await api.call(method.upper(), path, user, **kw)
        seen.add(status)
        schema = response(template, method, str(status))
        check(spec, schema, answer, f"{method.upper()} {template} {status}")
    assert seen == {200, 400, 404}
    check(spec, response("/api/chat/folders", "post", "201"), folder_created)
