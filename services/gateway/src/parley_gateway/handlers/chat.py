"""POST /api/chat and /api/chat/stream: one chat turn, as JSON or as SSE."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime

import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from parley_common.schemas import ChatJob, ErrorEvent, EventEnvelope, MetaEvent
from parley_common.schemas.events import encode_envelope

from parley_gateway.adapters.event_stream import StreamLost, Subscription
from parley_gateway.context import Services, services
from parley_gateway.errors import BadGateway, BadRequest, GatewayTimeout
from parley_gateway.metrics import FIRST_EVENT_SECONDS, JOBS_PUBLISHED, STREAMS
from parley_gateway.middlewares import REQUEST_ID
from parley_gateway.validation import ChatRequest, parse_chat_request, parse_json_object

log = structlog.get_logger("parley_gateway.chat")


def wants_stream(request: web.Request, body_stream: bool) -> bool:
    if request.path.endswith("/stream") or body_stream:
        return True
    return "text/event-stream" in request.headers.get("Accept", "")


def resolve_provider(svc: Services, asked: str) -> str:
    available = svc.settings.available_providers()
    if asked != "default":
        if asked not in available:
            configured = ", ".join(available) or "none"
            raise BadRequest(
                f"provider: {asked} is not configured on this server; configured: {configured}",
                code="provider_not_configured",
            )
        return asked
    preferred = svc.settings.default_provider
    if preferred and preferred in available:
        return preferred
    if not available:
        raise BadRequest(
            "provider: no provider is configured on this server", code="provider_not_configured"
        )
    return available[0]


async def chat(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    user_id = svc.auth.user_id(request)
    body = parse_json_object(await request.read())
    req = parse_chat_request(body, svc.settings.max_text_chars)
    provider = resolve_provider(svc, req.provider)
    request_id = request[REQUEST_ID]
    job_id = f"job-{secrets.token_hex(12)}"
    structlog.contextvars.bind_contextvars(job_id=job_id, provider=provider, user_id=user_id)

    turn = await svc.history.begin_turn(
        user_id=user_id,
        request_id=request_id,
        job_id=job_id,
        conversation_id=req.conversation_id,
        channel=req.channel,
        text=req.text,
        provider=provider,
        image=None,
    )
    job = ChatJob(
        job_id=job_id,
        request_id=request_id,
        user_id=user_id,
        conversation_id=turn.conversation_id,
        provider=provider,
        mood=req.mood,
        web=req.web,
        messages=turn.context,
        user_message_id=turn.user_message_id,
        created_at=datetime.now(UTC),
        deadline=time.time() + svc.settings.job_deadline_seconds,
    )
    meta = MetaEvent(conversation_id=turn.conversation_id, provider=provider, job_id=job_id)
    accepted = time.perf_counter()
    async with svc.hub.subscribe(job_id) as sub:
        # The meta event opens the job's replay log, so a resumed stream has it too.
        await svc.hub.log.publish(job_id, encode_envelope(0, meta))
        await svc.publisher.publish(job)
        JOBS_PUBLISHED.labels(provider).inc()
        log.info("chat.accepted", conversation_id=turn.conversation_id, stream=req.stream)
        if wants_stream(request, req.stream):
            return await _stream(request, svc, sub, req, meta, accepted)
        return await _collect(svc, sub, meta)


def _terminal_timeout(svc: Services) -> float:
    return float(svc.settings.job_deadline_seconds) + 60.0


async def _collect(svc: Services, sub: Subscription, meta: MetaEvent) -> web.Response:
    try:
        async with asyncio.timeout(_terminal_timeout(svc)):
            async for env in sub.events(after_seq=0):
                if env.type == "done":
                    data = env.payload()
                    return web.json_response(
                        {
                            "reply": data["reply"],
                            "conversation_id": data["conversation_id"],
                            "provider": data["provider"],
                        }
                    )
                if env.type == "error":
                    data = env.payload()
                    raise BadGateway(data["error"], code=data.get("code") or "provider_error")
    except TimeoutError as exc:
        raise GatewayTimeout(f"no reply within {_terminal_timeout(svc):.0f}s") from exc
    except StreamLost as exc:
        raise GatewayTimeout(f"lost the reply stream: {exc}") from exc
    raise GatewayTimeout("the reply stream ended without a result")


async def _stream(
    request: web.Request,
    svc: Services,
    sub: Subscription,
    req: ChatRequest,
    meta: MetaEvent,
    accepted: float,
) -> web.StreamResponse:
    resp = EventSourceResponse(
        sep="\n",
        allow_all_methods=True,
        ping_interval=svc.settings.sse_ping_seconds,
        send_timeout=svc.settings.sse_send_timeout,
        headers={"X-Request-ID": request[REQUEST_ID]},
    )
    await resp.prepare(request)
    STREAMS.inc()
    first = True
    try:
        await resp.send(meta.model_dump_json(), id="0", event="meta")
        try:
            async with asyncio.timeout(_terminal_timeout(svc)):
                async for env in sub.events(after_seq=0):
                    if first and env.type in ("assistant", "reasoning"):
                        FIRST_EVENT_SECONDS.labels(meta.provider).observe(
                            time.perf_counter() - accepted
                        )
                        first = False
                    await send_envelope(resp, env)
        except (TimeoutError, StreamLost) as exc:
            err = ErrorEvent(
                error="lost track of the reply; it is saved when it completes",
                conversation_id=meta.conversation_id,
                provider=meta.provider,
                code="stream_lost" if isinstance(exc, StreamLost) else "timeout",
            )
            await resp.send(err.model_dump_json(), event="error")
    except (ConnectionResetError, TimeoutError):
        log.info("chat.client_gone")  # generation goes on; the reply is saved
    finally:
        STREAMS.dec()
        resp.stop_streaming()
    return resp


async def send_envelope(resp: EventSourceResponse, env: EventEnvelope) -> None:
    await resp.send(env.data, id=str(env.seq), event=env.type)
