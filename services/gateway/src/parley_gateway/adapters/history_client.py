"""The gateway's client for history's internal API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from parley_common.schemas import ContextMessage, ImageRef
from pydantic import TypeAdapter

from parley_gateway.errors import ApiError, BadRequest, Forbidden, NotFound, Unavailable

log = structlog.get_logger("parley_gateway.history")

_MESSAGES = TypeAdapter(list[ContextMessage])


@dataclass(frozen=True, slots=True)
class BegunTurn:
    conversation_id: str
    user_message_id: str
    context: list[ContextMessage]


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
                f"{self._base}{path}",
                json=json,
                params=params,
                headers=self._headers(user_id, request_id),
                timeout=self._timeout,
            ) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("history.unreachable", error_type=type(exc).__name__)
            raise Unavailable("conversation history is unavailable", code="history_down") from exc
        if status >= 400:
            message = body.get("error", "history error") if isinstance(body, dict) else "error"
            if status == 400:
                raise BadRequest(message)
            if status == 403:
                raise Forbidden(message)
            if status == 404:
                raise NotFound(message)
            if status >= 500:
                raise Unavailable("conversation history is unavailable", code="history_down")
            err = ApiError(message)
            err.status = status
            raise err
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
    ) -> BegunTurn:
        _, body = await self.request(
            "POST",
            "/internal/v1/turns",
            user_id=user_id,
            request_id=request_id,
            json={
                "conversation_id": conversation_id,
                "channel": channel,
                "text": text,
                "provider": provider,
                "job_id": job_id,
                "image": image.model_dump() if image else None,
            },
        )
        return BegunTurn(
            conversation_id=body["conversation_id"],
            user_message_id=body["user_message_id"],
            context=_MESSAGES.validate_python(body["messages"]),
        )
