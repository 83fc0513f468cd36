"""The OpenAPI document describes exactly the routes the gateway serves."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from parley_gateway import openapi
from parley_gateway.app import create_app
from parley_gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
SPEC = openapi.document()


def _routes() -> set[tuple[str, str]]:
    app = create_app(GatewaySettings(_env_file=None))
    out = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if route.method == "HEAD":  # aiohttp adds HEAD beside every GET
            continue
        out.add((route.method, resource.canonical))
    return out


def _documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in METHODS
    }


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in SPEC["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_every_route_is_documented_and_every_documented_path_is_routed():
    routes, documented = _routes(), _documented()
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the gateway does not serve"


def test_document_is_openapi_3_1_with_bearer_security():
    assert SPEC["openapi"] == "3.1.0"
    assert SPEC["security"] == [{"bearerAuth": []}]
    assert SPEC["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_every_reference_resolves():
    raw = orjson.dumps(SPEC).decode()
    refs = set(re.findall(r'"\$ref":"#/([^"]+)"', raw))
    assert refs
    for ref in refs:
        node: Any = SPEC
        for part in ref.split("/"):
            assert part in node, ref
            node = node[part]


def test_operation_ids_are_unique_and_secured_operations_document_401():
    ids = [op["operationId"] for _, _, op in _operations()]
    assert len(ids) == len(set(ids))
    for path, method, op in _operations():
        public = op.get("security") == []
        assert public or "401" in op["responses"], (method, path)
        assert any(code.startswith("2") for code in op["responses"]), (method, path)


def test_path_templates_declare_their_parameters():
    for path, item in SPEC["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        declared = {
            p["name"] if "name" in p else p["$ref"].rsplit("/", 1)[-1]
            for p in item.get("parameters", [])
        }
        resolved = {
            SPEC["components"]["parameters"][d]["name"]
            if d in SPEC["components"]["parameters"]
            else d
            for d in declared
        }
        assert names <= resolved, path


def test_public_objects_are_closed_so_a_conformance_run_catches_extra_fields():
    schemas = SPEC["components"]["schemas"]
    for name in ("Conversation", "Message", "Folder", "TruncateResult", "Error", "ChatReply"):
        assert schemas[name]["additionalProperties"] is False, name
    assert set(schemas["Conversation"]["required"]) == {
        "id",
        "user_id",
        "channel",
        "created_at",
        "updated_at",
        "folder_id",
        "title",
    }


async def test_document_is_served_as_json():
    resp = await openapi.serve(make_mocked_request("GET", openapi.PATH))
    assert resp.content_type == "application/json"
    assert isinstance(resp.body, bytes)
    assert orjson.loads(resp.body) == orjson.loads(orjson.dumps(SPEC))
