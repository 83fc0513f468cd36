"""Conversation, message, folder and settings endpoints (proxied to history).

Each handler takes the user the middleware authenticated, checks its input, asks
history (which checks the stored owner: 403 for another user's conversation or folder,
404 for an unknown one) and renders the answer. docs/api.md documents them;
`GET /api/openapi.json` describes them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from parley_gateway import openapi, params
from parley_gateway.context import Services, services
from parley_gateway.middlewares import REQUEST_ID, USER_ID


def _caller(request: web.Request) -> tuple[Services, str, str]:
    """The services, the authenticated user (set by the `authenticate` middleware), and
    the request id. Owner fields in bodies or queries are never read: the user is this."""
    return services(request), request[USER_ID], request[REQUEST_ID]


def _ok() -> web.Response:
    return web.json_response({"ok": True})


# --- conversations ------------------------------------------------------------------
async def list_conversations(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    page = await svc.history.list_conversations(
        user_id=user_id,
        request_id=request_id,
        channel=params.channel(request),
        limit=params.limit(request),
        before=params.before(request),
        folder_id=params.optional_folder_id(request),
    )
    return web.json_response(page.model_dump(mode="json"))


async def get_conversation(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    conv = await svc.history.get_conversation(
        user_id=user_id,
        request_id=request_id,
        conversation_id=params.path_id(request, "conversation_id"),
    )
    return web.json_response(conv.model_dump(mode="json"))


async def update_conversation(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    conversation_id = params.path_id(request, "conversation_id")
    body = await params.body(request, frozenset({"title", "folder_id"}))
    conv = await svc.history.update_conversation(
        user_id=user_id,
        request_id=request_id,
        conversation_id=conversation_id,
        changes=params.conversation_changes(body),
    )
    return web.json_response(conv.model_dump(mode="json"))


async def delete_conversation(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    await svc.history.delete_conversation(
        user_id=user_id,
        request_id=request_id,
        conversation_id=params.path_id(request, "conversation_id"),
    )
    return _ok()


async def truncate_conversation(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    conversation_id = params.path_id(request, "conversation_id")
    body = await params.body(request, frozenset({"keep_count"}))
    result = await svc.history.truncate(
        user_id=user_id,
        request_id=request_id,
        conversation_id=conversation_id,
        keep_count=params.keep_count(body),
    )
    return web.json_response(result.model_dump(mode="json"))


async def list_messages(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    page = await svc.history.list_messages(
        user_id=user_id,
        request_id=request_id,
        conversation_id=params.required_conversation_id(request),
        limit=params.limit(request),
        before=params.before(request),
    )
    out: dict[str, Any] = {
        "conversation_id": page.conversation_id,
        # Extensions appear only where they are known.
        "messages": [m.model_dump(mode="json", exclude_none=True) for m in page.messages],
        "next_before": page.next_before,
    }
    return web.json_response(out)


# --- folders ------------------------------------------------------------------------
async def list_folders(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    folders = await svc.history.list_folders(user_id=user_id, request_id=request_id)
    return web.json_response(folders.model_dump(mode="json"))


async def create_folder(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    body = await params.body(request, frozenset({"name"}))
    folder = await svc.history.create_folder(
        user_id=user_id, request_id=request_id, name=params.folder_name(body)
    )
    return web.json_response(folder.model_dump(mode="json"), status=201)


async def rename_folder(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    folder_id = params.path_id(request, "folder_id")
    body = await params.body(request, frozenset({"name"}))
    folder = await svc.history.rename_folder(
        user_id=user_id, request_id=request_id, folder_id=folder_id, name=params.folder_name(body)
    )
    return web.json_response(folder.model_dump(mode="json"))


async def delete_folder(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    await svc.history.delete_folder(
        user_id=user_id, request_id=request_id, folder_id=params.path_id(request, "folder_id")
    )
    return _ok()


# --- user settings ------------------------------------------------------------------
async def get_settings(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    settings = await svc.history.get_settings(user_id, request_id)
    return web.json_response(settings.model_dump(mode="json"))


async def put_settings(request: web.Request) -> web.Response:
    svc, user_id, request_id = _caller(request)
    body = await params.body(request, frozenset({"default_provider"}))
    settings = await svc.history.put_settings(
        user_id=user_id, request_id=request_id, default_provider=params.default_provider(body)
    )
    return web.json_response(settings.model_dump(mode="json"))


def add_routes(app: web.Application) -> None:
    """Register the conversation endpoints on the gateway, and the API document."""
    r = app.router
    # Any character but `/` (aiohttp's default also refuses `{` and `}`, which ids may hold).
    conv = "/api/chat/conversations/{conversation_id:[^/]+}"
    r.add_get("/api/chat/conversations", list_conversations)
    r.add_get(conv, get_conversation)
    r.add_patch(conv, update_conversation)
    r.add_delete(conv, delete_conversation)
    r.add_post(f"{conv}/truncate", truncate_conversation)
    r.add_get("/api/chat/messages", list_messages)
    r.add_get("/api/chat/folders", list_folders)
    r.add_post("/api/chat/folders", create_folder)
    r.add_patch("/api/chat/folders/{folder_id:[^/]+}", rename_folder)
    r.add_delete("/api/chat/folders/{folder_id:[^/]+}", delete_folder)
    r.add_get("/api/me/settings", get_settings)
    r.add_put("/api/me/settings", put_settings)
    r.add_get(openapi.PATH, openapi.serve)
