"""The gateway's OpenAPI 3.1 document, served at `GET /api/openapi.json`.

Built in Python rather than kept as a file so that enums and limits come from the
code that enforces them (providers, moods, `limit` bounds, text lengths). Response
schemas are closed (`additionalProperties: false`) wherever the gateway controls
every field, so a conformance checker such as schemathesis can hold the server to
them. tests/unit/test_openapi.py checks that every route is documented and every
documented path is routed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from aiohttp import web
from parley_common.topology import PROVIDERS

from parley_gateway import params
from parley_gateway.validation import MAX_CONVERSATION_ID, MOODS, PROVIDER_OPTIONS

PATH = "/api/openapi.json"
VERSION = "0.1.0"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], properties: dict[str, Schema], **extra: Any) -> Schema:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    } | extra


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        410: "NotResumable",
        413: "PayloadTooLarge",
        429: "TooManyRequests",
        502: "BadGateway",
        503: "Unavailable",
        504: "GatewayTimeout",
    }
    return {str(s): {"$ref": f"#/components/responses/{names[s]}"} for s in statuses}


_TIMESTAMP: Schema = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
    "description": "UTC, millisecond precision, `Z` suffix: `2026-03-06T10:30:00.123Z`.",
    "examples": ["2026-03-06T10:30:00.000Z"],
}
_ID: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_CONVERSATION_ID}
_CURSOR: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]+$",
    "maxLength": params.MAX_CURSOR_CHARS,
    "description": "Opaque cursor: pass an earlier page's `next_before` back unchanged.",
}
_USAGE: Schema = _obj(
    [],
    {
        "input_tokens": {"type": ["integer", "null"], "minimum": 0},
        "output_tokens": {"type": ["integer", "null"], "minimum": 0},
    },
)


def _schemas() -> dict[str, Schema]:
    conversation_fields: dict[str, Schema] = {
        "id": _ID,
        "user_id": {"type": "string"},
        "channel": {"type": "string"},
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
        "folder_id": {"type": ["string", "null"]},
        "title": {"type": "string"},
    }
    folder_fields: dict[str, Schema] = {
        "id": {"type": "string"},
        "user_id": {"type": "string"},
        "name": {"type": "string", "minLength": 1, "maxLength": params.MAX_FOLDER_NAME_CHARS},
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
    }
    return {
        "Error": _obj(
            ["error"],
            {
                "error": {"type": "string", "description": "Readable; names the field on 400."},
                "code": {"type": "string", "description": "Stable machine-readable code."},
                "active_job_id": {
                    "type": "string",
                    "description": "On 409 `turn_in_progress`: the job still answering.",
                },
            },
        ),
        "NotReady": _obj(
            ["error", "failed"],
            {
                "error": {"type": "string"},
                "failed": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Dependency name → error type.",
                },
            },
        ),
        "NotResumable": _obj(
            ["error", "code", "conversation_id", "message_id"],
            {
                "error": {"type": "string"},
                "code": {"const": "not_resumable"},
                "conversation_id": {"type": "string"},
                "message_id": {"type": "string"},
            },
        ),
        "Job": _obj(
            ["job_id", "conversation_id", "provider", "state", "events_url"],
            {
                "job_id": {"type": "string"},
                "conversation_id": {"type": "string"},
                "provider": {"type": "string"},
                "state": {"type": "string", "enum": ["running", "finished"]},
                "events_url": {"type": "string"},
            },
        ),
        "JobList": _obj(
            ["conversation_id", "jobs"],
            {
                "conversation_id": {"type": "string"},
                "jobs": {"type": "array", "items": _ref("Job")},
            },
        ),
        "JobCancel": _obj(
            ["ok", "job_id", "state"],
            {
                "ok": {"const": True},
                "job_id": {"type": "string"},
                "state": {"type": "string", "enum": ["cancelling", "finished"]},
            },
        ),
        "Ok": _obj(["ok"], {"ok": {"const": True}}),
        "Ready": _obj(
            ["ok", "checked"],
            {"ok": {"const": True}, "checked": {"type": "array", "items": {"type": "string"}}},
        ),
        "ChatRequest": {
            "type": "object",
            "required": ["text"],
            "properties": {
                "text": {"type": "string", "minLength": 1, "description": "The message."},
                "provider": {
                    "type": "string",
                    "enum": list(PROVIDER_OPTIONS),
                    "default": "default",
                    "description": "`default`: the user's saved default provider "
                    "(`/api/me/settings`), then `DEFAULT_PROVIDER`, then the first "
                    "configured provider.",
                },
                "conversation_id": {
                    **_ID,
                    "description": "Continue this conversation; a new id is accepted only "
                    "inside the caller's own `<sub>:` namespace.",
                },
                "mood": {"type": "string", "enum": list(MOODS), "default": "normal"},
                "web": {
                    "type": "boolean",
                    "default": False,
                    "description": "Offer the model web search and web fetch tools; each "
                    "tool step is a `status` event and `done` lists the `sources`. A 400 "
                    "when no web search backend is configured.",
                },
                "image_base64": {
                    "type": "string",
                    "description": "Base64 image (png, jpeg, gif or webp; with `image_mime`); "
                    "checked for type, signature, size and pixel dimensions.",
                },
                "image_mime": {
                    "type": "string",
                    "description": "image/png, image/jpeg, image/gif or image/webp.",
                },
                "channel": {
                    "type": "string",
                    "pattern": "^[a-z0-9][a-z0-9_-]{0,31}$",
                    "default": "web",
                    "description": "Extension: the channel of a new conversation.",
                },
                "stream": {
                    "type": "boolean",
                    "default": False,
                    "description": "Extension: stream SSE even without the Accept header.",
                },
            },
        },
        "ChatReply": _obj(
            ["reply", "conversation_id", "provider"],
            {
                "reply": {"type": "string"},
                "conversation_id": {"type": "string"},
                "provider": {"type": "string", "enum": list(PROVIDERS)},
            },
        ),
        "MetaEvent": _obj(
            ["type", "conversation_id", "provider", "job_id"],
            {
                "type": {"const": "meta"},
                "conversation_id": {"type": "string"},
                "provider": {"type": "string"},
                "job_id": {"type": "string"},
            },
        ),
        "AssistantEvent": _obj(
            ["type", "delta"], {"type": {"const": "assistant"}, "delta": {"type": "string"}}
        ),
        "ReasoningEvent": _obj(
            ["type", "delta"], {"type": {"const": "reasoning"}, "delta": {"type": "string"}}
        ),
        "StatusEvent": _obj(
            ["type", "message"], {"type": {"const": "status"}, "message": {"type": "string"}}
        ),
        "DoneEvent": _obj(
            ["type", "reply", "conversation_id", "provider"],
            {
                "type": {"const": "done"},
                "reply": {"type": "string"},
                "conversation_id": {"type": "string"},
                "provider": {"type": "string"},
                "message_id": {"type": ["string", "null"]},
                "model": {"type": ["string", "null"]},
                "usage": _nullable(_ref("Usage")),
                "sources": _nullable({"type": "array", "items": _ref("Source")}),
            },
        ),
        "Source": _obj(
            ["url", "title"],
            {"url": {"type": "string"}, "title": {"type": "string"}},
            description="A web page a `web: true` reply drew on.",
        ),
        "ErrorEvent": _obj(
            ["type", "error", "conversation_id", "provider"],
            {
                "type": {"const": "error"},
                "error": {"type": "string"},
                "conversation_id": {"type": "string"},
                "provider": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "message_id": {"type": ["string", "null"]},
            },
        ),
        "SseEvent": _obj(
            ["event", "data"],
            {
                "event": {
                    "type": "string",
                    "enum": ["meta", "assistant", "reasoning", "status", "done", "error"],
                },
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": _ref("StreamEvent"),
                },
            },
            description="One event of a `text/event-stream` answer (OpenAPI 3.1: the media "
            "type's `schema` describes each event). `data` is JSON: a StreamEvent whose "
            "`type` is the `event`.",
        ),
        "StreamEvent": {
            "description": "The JSON `data` of one SSE event; its `type` is the SSE `event`.",
            "oneOf": [
                _ref(n)
                for n in (
                    "MetaEvent",
                    "AssistantEvent",
                    "ReasoningEvent",
                    "StatusEvent",
                    "DoneEvent",
                    "ErrorEvent",
                )
            ],
            "discriminator": {"propertyName": "type"},
        },
        "Usage": _USAGE,
        "Conversation": _obj(list(conversation_fields), conversation_fields),
        "ConversationList": _obj(
            ["conversations", "next_before"],
            {
                "conversations": {"type": "array", "items": _ref("Conversation")},
                "next_before": _nullable(_CURSOR),
            },
        ),
        "ConversationUpdate": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": params.MAX_TITLE_CHARS},
                "folder_id": {
                    "type": ["string", "null"],
                    "description": "A folder of the caller's, or null to unfile.",
                },
            },
        },
        "Message": _obj(
            ["id", "role", "content", "created_at", "status"],
            {
                "id": {"type": "string"},
                "role": {"type": "string", "enum": ["user", "assistant", "system"]},
                "content": {"type": "string"},
                "created_at": _TIMESTAMP,
                "status": {"type": "string", "enum": ["complete", "cancelled", "error"]},
                "provider": {"type": "string"},
                "model": {"type": "string"},
                "reasoning": {"type": "string"},
                "usage": _ref("Usage"),
                "sources": {"type": "array", "items": _ref("Source")},
            },
            description="`provider`, `model`, `reasoning` and `usage` appear where known; "
            "`sources` on the replies of `web: true` turns.",
        ),
        "MessageList": _obj(
            ["conversation_id", "messages", "next_before"],
            {
                "conversation_id": {"type": "string"},
                "messages": {
                    "type": "array",
                    "items": _ref("Message"),
                    "description": "The newest `limit` messages, oldest first.",
                },
                "next_before": _nullable(_CURSOR),
            },
        ),
        "TruncateRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"keep_count": {"type": "integer", "minimum": 0, "default": 0}},
        },
        "TruncateResult": _obj(
            ["ok", "conversation_id", "keep_count", "deleted"],
            {
                "ok": {"const": True},
                "conversation_id": {"type": "string"},
                "keep_count": {"type": "integer", "minimum": 0},
                "deleted": {"type": "integer", "minimum": 0},
            },
        ),
        "Folder": _obj(list(folder_fields), folder_fields),
        "FolderList": _obj(["folders"], {"folders": {"type": "array", "items": _ref("Folder")}}),
        "FolderName": _obj(
            ["name"],
            {"name": {"type": "string", "minLength": 1, "maxLength": params.MAX_FOLDER_NAME_CHARS}},
        ),
        "UserSettings": _obj(
            ["default_provider"],
            {"default_provider": {"type": ["string", "null"], "enum": [*PROVIDERS, None]}},
        ),
        "UserSettingsUpdate": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "default_provider": {"type": ["string", "null"], "enum": [*PROVIDERS, None]}
            },
        },
    }


def _responses() -> dict[str, Schema]:
    def err(description: str) -> Schema:
        return _json(_ref("Error"), description)

    unavailable = err("A dependency (broker, history) is down; retry later.")
    unavailable["headers"] = {
        "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}
    }
    limited = err(
        "A per-user limit: requests per minute (`rate_limited`) or open streams "
        "(`too_many_streams`); retry after `Retry-After` seconds."
    )
    limited["headers"] = {
        "Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds."}
    }
    return {
        "BadRequest": err("Bad input; `error` starts with the field name (`limit: …`)."),
        "Unauthorized": err("Missing, invalid or expired bearer token."),
        "Forbidden": err("The conversation or folder belongs to another user."),
        "NotFound": err("Unknown conversation or folder."),
        "Conflict": err(
            "The request conflicts with the current state: a reply is still being generated "
            "in the conversation (`turn_in_progress`, with `active_job_id`), or a limit "
            "such as the folder count."
        ),
        "NotResumable": _json(
            _ref("NotResumable"),
            "The job's events have expired; its reply is saved in the conversation.",
        ),
        "PayloadTooLarge": err("Request body (MAX_BODY_BYTES) or image too large."),
        "TooManyRequests": limited,
        "BadGateway": err("The provider failed (JSON requests; SSE gets an `error` event)."),
        "Unavailable": unavailable,
        "GatewayTimeout": err("No reply in time."),
    }


def _parameters() -> dict[str, Schema]:
    return {
        "ConversationIdPath": {
            "name": "conversation_id",
            "in": "path",
            "required": True,
            "description": "Percent-encode it: ids contain `:` (`%3A` and `:` both work).",
            "schema": _ID,
        },
        "FolderIdPath": {"name": "folder_id", "in": "path", "required": True, "schema": _ID},
        "Limit": {
            "name": "limit",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": params.MAX_LIMIT,
                "default": params.DEFAULT_LIMIT,
            },
        },
        "Before": {
            "name": "before",
            "in": "query",
            "description": "Extension: continue after the page that returned this cursor.",
            "schema": _CURSOR,
        },
    }


def _op(
    op_id: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    body_required: bool = True,
    public: bool = False,
    description: str | None = None,
    tag: str = "conversations",
) -> Schema:
    op: Schema = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    if body is not None:
        responses = _errors(413) | responses
    if public:
        op["security"] = []
    else:
        # Every authenticated operation: a bad token, and the per-user request rate.
        responses = responses | _errors(401, 429)
    op["responses"] = responses
    return op


def _param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def _paths() -> dict[str, Schema]:
    conv_id = _param("ConversationIdPath")
    folder_id = _param("FolderIdPath")
    owned = _errors(400, 401, 403, 404, 503)
    chat_responses = {
        "200": {
            "description": "JSON reply, or an SSE stream when `Accept` includes "
            "`text/event-stream`, the body has `stream: true`, or the path is "
            "`/api/chat/stream`. SSE events: `meta`, then `assistant`/`reasoning`/`status`, "
            "then one `done` or `error`; each has `id: <seq>` and a JSON `data` "
            "(StreamEvent); `: ping` comments keep the connection alive.",
            "content": {
                "application/json": {"schema": _ref("ChatReply")},
                "text/event-stream": {
                    "schema": _ref("SseEvent"),
                    "x-event-schema": _ref("StreamEvent"),
                },
            },
        },
        **_errors(400, 401, 403, 404, 409, 413, 502, 503, 504),
    }
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "description": "A retried POST with the same key follows the first one's job.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    }
    chat = _op(
        "chat",
        "Send a message; JSON reply or SSE stream",
        chat_responses,
        parameters=[idempotency],
        body=_ref("ChatRequest"),
        tag="chat",
    )
    stream = _op(
        "chatStream",
        "Send a message; always an SSE stream",
        chat_responses,
        parameters=[idempotency],
        body=_ref("ChatRequest"),
        tag="chat",
    )
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^job-[0-9a-f]{24}$"},
    }
    return {
        "/api/chat": {"post": chat},
        "/api/chat/stream": {"post": stream},
        "/api/chat/jobs": {
            "get": _op(
                "listJobs",
                "The caller's running jobs in a conversation",
                {"200": _json(_ref("JobList"), "Active jobs."), **_errors(400, 401, 503)},
                parameters=[
                    {"name": "conversation_id", "in": "query", "required": True, "schema": _ID}
                ],
                tag="chat",
            )
        },
        "/api/chat/jobs/{job_id}/events": {
            "parameters": [job_id],
            "get": _op(
                "jobEvents",
                "Resume a job's stream: replay after Last-Event-ID, then follow live",
                {
                    "200": {
                        "description": "SSE stream, framed as for POST /api/chat.",
                        "content": {
                            "text/event-stream": {
                                "schema": _ref("SseEvent"),
                                "x-event-schema": _ref("StreamEvent"),
                            }
                        },
                    },
                    **_errors(400, 401, 403, 404, 410, 503),
                },
                parameters=[
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "integer", "minimum": -1},
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "description": "For clients that cannot set the header.",
                        "schema": {"type": "integer", "minimum": -1},
                    },
                ],
                tag="chat",
            ),
        },
        "/api/chat/jobs/{job_id}/cancel": {
            "parameters": [job_id],
            "post": _op(
                "cancelJob",
                "Cancel a running job; the partial reply is saved as cancelled",
                {
                    "200": _json(_ref("JobCancel"), "The job had already finished."),
                    "202": _json(_ref("JobCancel"), "Cancellation requested."),
                    **_errors(401, 403, 404, 503),
                },
                tag="chat",
            ),
        },
        "/api/chat/conversations": {
            "get": _op(
                "listConversations",
                "List the caller's conversations, newest-updated first",
                {
                    "200": _json(_ref("ConversationList"), "A page of conversations."),
                    **_errors(400, 401, 503),
                },
                parameters=[
                    {
                        "name": "channel",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "pattern": "^[a-z0-9][a-z0-9_-]{0,31}$",
                            "default": "web",
                        },
                    },
                    _param("Limit"),
                    _param("Before"),
                    {
                        "name": "folder_id",
                        "in": "query",
                        "description": "Extension: only conversations in this folder.",
                        "schema": _ID,
                    },
                ],
            )
        },
        "/api/chat/conversations/{conversation_id}": {
            "parameters": [conv_id],
            "get": _op(
                "getConversation",
                "One conversation",
                {"200": _json(_ref("Conversation"), "The conversation."), **owned},
            ),
            "patch": _op(
                "updateConversation",
                "Rename a conversation and/or move it into or out of a folder",
                {
                    "200": _json(_ref("Conversation"), "The updated conversation."),
                    **owned,
                },
                body=_ref("ConversationUpdate"),
                description="`updated_at` is not changed: the list stays ordered by activity.",
            ),
            "delete": _op(
                "deleteConversation",
                "Delete a conversation, its messages and attachments",
                {"200": _json(_ref("Ok"), "Deleted."), **owned},
            ),
        },
        "/api/chat/conversations/{conversation_id}/truncate": {
            "parameters": [conv_id],
            "post": _op(
                "truncateConversation",
                "Keep only the newest `keep_count` messages",
                {"200": _json(_ref("TruncateResult"), "Truncated."), **owned},
                body=_ref("TruncateRequest"),
                body_required=False,
            ),
        },
        "/api/chat/messages": {
            "get": _op(
                "listMessages",
                "The newest messages of a conversation, oldest first",
                {"200": _json(_ref("MessageList"), "A page of messages."), **owned},
                parameters=[
                    {"name": "conversation_id", "in": "query", "required": True, "schema": _ID},
                    _param("Limit"),
                    _param("Before"),
                ],
            )
        },
        "/api/chat/folders": {
            "get": _op(
                "listFolders",
                "The caller's folders, oldest first",
                {"200": _json(_ref("FolderList"), "All folders."), **_errors(401, 503)},
                tag="folders",
            ),
            "post": _op(
                "createFolder",
                "Create a folder",
                {
                    "201": _json(_ref("Folder"), "Created."),
                    **_errors(400, 401, 409, 503),
                },
                body=_ref("FolderName"),
                tag="folders",
            ),
        },
        "/api/chat/folders/{folder_id}": {
            "parameters": [folder_id],
            "patch": _op(
                "renameFolder",
                "Rename a folder",
                {"200": _json(_ref("Folder"), "Renamed."), **owned},
                body=_ref("FolderName"),
                tag="folders",
            ),
            "delete": _op(
                "deleteFolder",
                "Delete a folder; its conversations become unfiled",
                {"200": _json(_ref("Ok"), "Deleted."), **owned},
                tag="folders",
            ),
        },
        "/api/me/settings": {
            "get": _op(
                "getSettings",
                "The caller's settings",
                {"200": _json(_ref("UserSettings"), "Settings."), **_errors(401, 503)},
                tag="settings",
            ),
            "put": _op(
                "putSettings",
                "Replace the caller's settings",
                {"200": _json(_ref("UserSettings"), "Saved."), **_errors(400, 401, 503)},
                body=_ref("UserSettingsUpdate"),
                description="A field left out is reset (null); `default_provider: null` "
                "clears the saved default.",
                tag="settings",
            ),
        },
        "/healthz": {
            "get": _op(
                "healthz",
                "Liveness",
                {"200": _json(_ref("Ok"), "Alive.")},
                public=True,
                tag="operations",
            )
        },
        "/readyz": {
            "get": _op(
                "readyz",
                "Readiness: Redis, RabbitMQ and history answer",
                {
                    "200": _json(_ref("Ready"), "Ready."),
                    "503": _json(_ref("NotReady"), "A dependency does not answer."),
                },
                public=True,
                tag="operations",
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                public=True,
                tag="operations",
            )
        },
        PATH: {
            "get": _op(
                "openapi",
                "This document",
                {"200": _json({"type": "object"}, "The OpenAPI 3.1 document.")},
                public=True,
                tag="operations",
            )
        },
    }


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Parley Chat API",
            "version": VERSION,
            "description": "The Chat API reference with Parley's extensions "
            '(docs/api.md). Every error body is `{"error", "code"}`.',
        },
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "chat"},
            {"name": "conversations"},
            {"name": "folders"},
            {"name": "settings"},
            {"name": "operations"},
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The user id is the `sub` claim; `exp` is required.",
                }
            },
            "schemas": _schemas(),
            "responses": _responses(),
            "parameters": _parameters(),
        },
    }


@cache
def query_parameters(method: str, path: str) -> frozenset[str] | None:
    """The query parameters the document names for an operation (`path` is the route's
    canonical form), or None for an undocumented one. Anything else is refused."""
    doc = document()
    item = doc["paths"].get(path)
    if item is None or method.lower() not in item:
        return None
    names = set()
    for param in [*item.get("parameters", []), *item[method.lower()].get("parameters", [])]:
        if "$ref" in param:
            param = doc["components"]["parameters"][param["$ref"].rsplit("/", 1)[1]]
        if param["in"] == "query":
            names.add(param["name"])
    return frozenset(names)


@cache
def _encoded() -> bytes:
    return orjson.dumps(document())


async def serve(_: web.Request) -> web.Response:
    return web.Response(body=_encoded(), content_type="application/json")
