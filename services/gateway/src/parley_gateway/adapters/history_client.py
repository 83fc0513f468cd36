"""The gateway's client for history's internal API."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from parley_common.http import NDJSON
from parley_common.schemas import ContextMessage, ImageRef, Source
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from yarl import URL

from parley_gateway.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
)

log = structlog.get_logger("parley_gateway.history")

_MESSAGES = TypeAdapter(list[ContextMessage])


def _seg(value: str) -> str:
    """One path segment: ids hold `:` and may hold `/`, `%`, `?`; history decodes them."""
    return quote(value, safe="")


class _Reply(BaseModel):
    """What history answers; tolerant of fields a newer history adds."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Conversation(_Reply):
    id: str
    user_id: str
    channel: str
    created_at: str
    updated_at: str
    folder_id: str | None
    title: str


class ConversationPage(_Reply):
    conversations: list[Conversation]
    next_before: str | None


class MessageUsage(_Reply):
    input_tokens: int | None = None
    output_tokens: int | None = None


class Message(_Reply):
    id: str
    role: Literal["system", "user", "assistant"]
    content: str
    created_at: str
    status: Literal["complete", "cancelled", "error"]
    provider: str | None = None
    model: str | None = None
    reasoning: str | None = None
    usage: MessageUsage | None = None
    # The pages a `web: true` reply drew on.
    sources: list[Source] | None = None


class MessagePage(_Reply):
    conversation_id: str
    messages: list[Message]
    next_before: str | None


class Truncated(_Reply):
    ok: bool
    conversation_id: str
    keep_count: int
    deleted: int


class Folder(_Reply):
    id: str
    user_id: str
    name: str
    created_at: str
    updated_at: str


class FolderList(_Reply):
    folders: list[Folder]


class UserSettings(_Reply):
    default_provider: str | None = None


_R = TypeVar("_R", bound=_Reply)


@dataclass(frozen=True, slots=True)
class BegunTurn:
    conversation_id: str
    user_message_id: str
    context: list[ContextMessage]
    # A staged begin: resolves once history has stored the user message (raises
    # Unavailable when it could not); None when it was stored before the answer.
    stored: asyncio.Future[None] | None = None


def _begun(body: Any) -> BegunTurn:
    """History's answer; without `messages` for a conversation the gateway named, whose
    context it holds already."""
    return BegunTurn(
        conversation_id=body["conversation_id"],
        user_message_id=body["user_message_id"],
        context=_MESSAGES.validate_python(body.get("messages", [])),
    )


async def _stored(resp: aiohttp.ClientResponse) -> None:
    """A staged begin's second line: whether history stored the message."""
    try:
        line = await resp.content.readline()
        outcome = orjson.loads(line) if line else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise _unreachable(exc) from exc
    finally:
        resp.release()
    if not isinstance(outcome, dict) or outcome.get("stored") is not True:
        log.error("history.message_unsaved")
        raise Unavailable("conversation history could not store the message", code="history_down")


def _unreachable(exc: BaseException) -> Unavailable:
    log.warning("history.unreachable", error_type=type(exc).__name__)
    return Unavailable("conversation history is unavailable", code="history_down")


def _raise_for(status: int, body: Any) -> None:
    """History's 4xx as the matching ApiError, its outages as 503."""
    if status < 400:
        return
    message = body.get("error", "history error") if isinstance(body, dict) else "error"
    if status == 401:
        # History refused the service credential: a deployment fault, not the
        # client's (whose token was fine), so not a 401 to the client.
        log.error("history.credential_refused")
        raise Unavailable("conversation history is unavailable", code="history_down")
    if status == 400:
        raise BadRequest(message)
    if status == 403:
        raise Forbidden(message)
    if status == 404:
        raise NotFound(message)
    if status == 409:
        conflict = Conflict(message, code=body.get("code") if isinstance(body, dict) else None)
        if isinstance(body, dict) and isinstance(body.get("active_job_id"), str):
            conflict.extra["active_job_id"] = body["active_job_id"]
        raise conflict
    if status >= 500:
        raise Unavailable("conversation history is unavailable", code="history_down")
    err = ApiError(message)
    err.status = status
    raise err


class HistoryClient:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, token: str, timeout: float
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def _headers(self, user_id: str, request_id: str) -> dict[str, str]:
        headers = {"X-Parley-User": user_id, "X-Request-ID": request_id}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        user_id: str,
        request_id: str,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Call history; its 4xx come back as the matching ApiError, outages as 503."""
        try:
            async with self._session.request(
                method,
                URL(f"{self._base}{path}", encoded=True),
                json=json,
                params=params,
                headers=self._headers(user_id, request_id),
                timeout=self._timeout,
            ) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _unreachable(exc) from exc
        _raise_for(status, body)
        return status, body

    async def begin_turn(
        self,
        *,
        user_id: str,
        request_id: str,
        job_id: str,
        conversation_id: str | None,
        channel: str,
        text: str,
        provider: str,
        image: ImageRef | None,
        lock_seconds: int = 900,
        new_conversation_id: str | None = None,
        staged: bool = False,
    ) -> BegunTurn:
        """Store the user message (durably: history answers after its majority
        writes) and get the context; without `conversation_id`, in a new conversation
        named `new_conversation_id` (or by history, when that is None).

        `staged`: history answers with the context at once and stores the message
        after; `stored` on the result resolves once it has (ADR 10)."""
        payload = {
            "conversation_id": conversation_id,
            "new_conversation_id": new_conversation_id,
            "channel": channel,
            "text": text,
            "provider": provider,
            "job_id": job_id,
            "image": image.model_dump() if image else None,
            "lock_seconds": lock_seconds,
        }
        if staged:
            return await self._begin_staged(user_id, request_id, payload | {"staged": True})
        _, body = await self.request(
            "POST", "/internal/v1/turns", user_id=user_id, request_id=request_id, json=payload
        )
        return _begun(body)

    async def _begin_staged(
        self, user_id: str, request_id: str, payload: dict[str, Any]
    ) -> BegunTurn:
        try:
            resp = await self._session.request(
                "POST",
                URL(f"{self._base}/internal/v1/turns", encoded=True),
                json=payload,
                headers=self._headers(user_id, request_id),
                timeout=self._timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(exc) from exc
        if resp.content_type != NDJSON:  # refused, or answered whole
            try:
                body = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise _unreachable(exc) from exc
            finally:
                resp.release()
            _raise_for(resp.status, body)
            return _begun(body)
        try:
            begun = _begun(orjson.loads(await resp.content.readline()))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            resp.release()
            raise _unreachable(exc) from exc
        return dataclasses.replace(begun, stored=asyncio.ensure_future(_stored(resp)))

    async def _call(
        self,
        model: type[_R],
        method: str,
        path: str,
        *,
        user_id: str,
        request_id: str,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> _R:
        _, body = await self.request(
            method, path, user_id=user_id, request_id=request_id, json=json, params=params
        )
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            log.error("history.bad_reply", path=path.split("?")[0], errors=exc.error_count())
            raise Unavailable("conversation history answered badly", code="history_down") from exc

    async def list_conversations(
        self,
        *,
        user_id: str,
        request_id: str,
        channel: str,
        limit: int,
        before: str | None,
        folder_id: str | None,
    ) -> ConversationPage:
        params = {"channel": channel, "limit": str(limit)}
        if before is not None:
            params["before"] = before
        if folder_id is not None:
            params["folder_id"] = folder_id
        return await self._call(
            ConversationPage,
            "GET",
            "/internal/v1/conversations",
            user_id=user_id,
            request_id=request_id,
            params=params,
        )

    async def get_conversation(
        self, *, user_id: str, request_id: str, conversation_id: str
    ) -> Conversation:
        return await self._call(
            Conversation,
            "GET",
            f"/internal/v1/conversations/{_seg(conversation_id)}",
            user_id=user_id,
            request_id=request_id,
        )

    async def update_conversation(
        self, *, user_id: str, request_id: str, conversation_id: str, changes: dict[str, Any]
    ) -> Conversation:
        """`changes` holds `title` and/or `folder_id` (None moves it out of its folder)."""
        return await self._call(
            Conversation,
            "PATCH",
            f"/internal/v1/conversations/{_seg(conversation_id)}",
            user_id=user_id,
            request_id=request_id,
            json=changes,
        )

    async def delete_conversation(
        self, *, user_id: str, request_id: str, conversation_id: str
    ) -> None:
        await self.request(
            "DELETE",
            f"/internal/v1/conversations/{_seg(conversation_id)}",
            user_id=user_id,
            request_id=request_id,
        )

    async def truncate(
        self, *, user_id: str, request_id: str, conversation_id: str, keep_count: int
    ) -> Truncated:
        return await self._call(
            Truncated,
            "POST",
            f"/internal/v1/conversations/{_seg(conversation_id)}/truncate",
            user_id=user_id,
            request_id=request_id,
            json={"keep_count": keep_count},
        )

    async def list_messages(
        self,
        *,
        user_id: str,
        request_id: str,
        conversation_id: str,
        limit: int,
        before: str | None,
    ) -> MessagePage:
        params = {"limit": str(limit)}
        if before is not None:
            params["before"] = before
        return await self._call(
            MessagePage,
            "GET",
            f"/internal/v1/conversations/{_seg(conversation_id)}/messages",
            user_id=user_id,
            request_id=request_id,
            params=params,
        )

    async def list_folders(self, *, user_id: str, request_id: str) -> FolderList:
        return await self._call(
            FolderList, "GET", "/internal/v1/folders", user_id=user_id, request_id=request_id
        )

    async def create_folder(self, *, user_id: str, request_id: str, name: str) -> Folder:
        return await self._call(
            Folder,
            "POST",
            "/internal/v1/folders",
            user_id=user_id,
            request_id=request_id,
            json={"name": name},
        )

    async def rename_folder(
        self, *, user_id: str, request_id: str, folder_id: str, name: str
    ) -> Folder:
        return await self._call(
            Folder,
            "PATCH",
            f"/internal/v1/folders/{_seg(folder_id)}",
            user_id=user_id,
            request_id=request_id,
            json={"name": name},
        )

    async def delete_folder(self, *, user_id: str, request_id: str, folder_id: str) -> None:
        await self.request(
            "DELETE",
            f"/internal/v1/folders/{_seg(folder_id)}",
            user_id=user_id,
            request_id=request_id,
        )

    async def get_settings(self, user_id: str, request_id: str) -> UserSettings:
        return await self._call(
            UserSettings, "GET", "/internal/v1/settings", user_id=user_id, request_id=request_id
        )

    async def put_settings(
        self, *, user_id: str, request_id: str, default_provider: str | None
    ) -> UserSettings:
        return await self._call(
            UserSettings,
            "PUT",
            "/internal/v1/settings",
            user_id=user_id,
            request_id=request_id,
            json={"default_provider": default_provider},
        )

    async def abandon_turn(
        self,
        *,
        user_id: str,
        request_id: str,
        job_id: str,
        conversation_id: str,
        provider: str,
        error: str,
    ) -> None:
        await self.request(
            "POST",
            f"/internal/v1/turns/{quote(job_id, safe='')}/abandon",
            user_id=user_id,
            request_id=request_id,
            json={"conversation_id": conversation_id, "provider": provider, "error": error},
        )
