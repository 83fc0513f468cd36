"""POST /api/chat and /api/chat/stream: one chat turn, as JSON or as SSE."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Awaitable, Coroutine
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from parley_common.ids import new_conversation_id, user_message_id
from parley_common.schemas import ChatJob, ContextMessage, ImageRef, MetaEvent, decode_envelope
from parley_common.schemas.events import encode_envelope
from redis.exceptions import RedisError

from parley_gateway.adapters.event_stream import Subscription
from parley_gateway.adapters.history_client import BegunTurn
from parley_gateway.context import Services, services
from parley_gateway.errors import ApiError, BadRequest, Forbidden, Unavailable
from parley_gateway.handlers.streaming import collect, relay
from parley_gateway.images import ImageLimits, validate_image
from parley_gateway.metrics import JOBS_PUBLISHED
from parley_gateway.middlewares import REQUEST_ID, USER_ID
from parley_gateway.validation import parse_chat_request, parse_json_object

log = structlog.get_logger("parley_gateway.chat")

IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def wants_stream(request: web.Request, body_stream: bool) -> bool:
    if request.path.endswith("/stream") or body_stream:
        return True
    return "text/event-stream" in request.headers.get("Accept", "")


async def resolve_provider(svc: Services, asked: str, user_id: str, request_id: str) -> str:
    """`default` is the user's saved default, then DEFAULT_PROVIDER, then the first
    configured provider; a saved or system default that is not available is skipped."""
    available = svc.settings.available_providers()
    if asked != "default":
        if asked not in available:
            configured = ", ".join(available) or "none"
            raise BadRequest(
                f"provider: {asked} is not configured on this server; configured: {configured}",
                code="provider_not_configured",
            )
        return asked
    if not available:
        raise BadRequest(
            "provider: no provider is configured on this server", code="provider_not_configured"
        )
    saved = (await svc.history.get_settings(user_id, request_id)).default_provider
    for preferred in (saved, svc.settings.default_provider):
        if preferred and preferred in available:
            return preferred
    return available[0]


async def chat(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    user_id = request[USER_ID]
    idem_key = idempotency_key(request)
    body = parse_json_object(await request.read())
    req = parse_chat_request(body, svc.settings.max_text_chars)
    if req.web and svc.settings.web_search_backend() is None:
        raise BadRequest(
            "web: no web search backend is configured", code="web_search_not_configured"
        )
    image = None
    if req.image_base64 is not None or req.image_mime is not None:
        # Decoding and checking an image is CPU work: off the event loop, so that
        # other streams keep flowing while a 5 MiB upload is examined.
        limits = ImageLimits(
            svc.settings.max_image_bytes,
            svc.settings.max_image_pixels,
            svc.settings.max_image_side,
        )
        image = await asyncio.to_thread(validate_image, req.image_base64, req.image_mime, limits)
    provider = await resolve_provider(svc, req.provider, user_id, request[REQUEST_ID])
    request_id = request[REQUEST_ID]
    job_id = f"job-{secrets.token_hex(12)}"
    structlog.contextvars.bind_contextvars(job_id=job_id, provider=provider, user_id=user_id)
    streaming = wants_stream(request, req.stream)

    if idem_key is not None:
        earlier = await svc.idempotency.claim(user_id, idem_key, job_id)
        if earlier is not None:
            log.info("chat.idempotent_retry", attached_to=earlier)
            return await attach(request, svc, user_id, earlier, streaming)
    async with contextlib.AsyncExitStack() as scope:
        image_ref = ImageRef(mime=image.mime, data_base64=image.data_base64) if image else None
        fresh = req.conversation_id is None
        conversation_id = new_conversation_id(user_id, req.channel) if fresh else None
        begin = svc.history.begin_turn(
            user_id=user_id,
            request_id=request_id,
            job_id=job_id,
            conversation_id=req.conversation_id,
            new_conversation_id=conversation_id,
            channel=req.channel,
            text=req.text,
            provider=provider,
            image=image_ref,
            lock_seconds=_active_ttl(svc),
            staged=not fresh,
        )
        subscribe = scope.enter_async_context(svc.hub.subscribe(job_id))
        subscribed: object = None
        if conversation_id is not None:
            # A first message is the whole context: its job needs nothing from history.
            # It is queued at once, and history stores the message once the broker has
            # it, while the worker calls its provider (ADR 10). The client hears nothing
            # before the message is stored; a job that cannot be queued stores nothing.
            turn = BegunTurn(
                conversation_id,
                user_message_id(job_id),
                [ContextMessage(role="user", content=req.text, image=image_ref)],
            )
        else:
            # The turn is taken and its context read while this gateway subscribes to
            # the job's events; history stores the message while the job is queued
            # (`stored`: a staged begin, ADR 10).
            begun, subscribed = await asyncio.gather(begin, subscribe, return_exceptions=True)
            if isinstance(begun, BaseException):
                if idem_key is not None:
                    await svc.idempotency.release(user_id, idem_key, job_id)
                raise begun
            turn = begun
        structlog.contextvars.bind_contextvars(conversation_id=turn.conversation_id)
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
        meta_raw = encode_envelope(0, meta)
        if isinstance(subscribed, BaseException):
            if turn.stored is not None:
                await asyncio.gather(turn.stored, return_exceptions=True)
            await _not_queued(svc, user_id, request_id, idem_key, job, subscribed)
            raise _as_api_error(subscribed)
        # Queued, listed as running and its replay log opened with the meta event (so a
        # resumed stream has it too), at once; the job first, as the broker's commit is
        # the longest wait before a worker starts. A worker's first event comes after
        # its provider answers, long after the others; the registry gives the same end
        # state whichever of `register` and `finish` comes first (a job that fails at
        # once).
        queuing = asyncio.ensure_future(svc.publisher.publish(job))
        listing = svc.hub.log.pipeline()  # both in one round trip
        svc.registry.register_in(
            listing, job_id, user_id, turn.conversation_id, provider, _active_ttl(svc)
        )
        svc.hub.log.publish_in(listing, job_id, [meta_raw])
        # A new conversation's turn is also stored (once queued) and followed: the
        # stream then reads the job's replay log for what came before it subscribed.
        # Another's message is being stored meanwhile.
        alongside: list[Awaitable[object]] = []
        if fresh:
            alongside = [_once(queuing, begin), subscribe]
        elif turn.stored is not None:
            alongside = [turn.stored]
        queued, listed, *also = await asyncio.gather(
            queuing, listing.execute(), *alongside, return_exceptions=True
        )
        failed = next((r for r in (*also, queued, listed) if isinstance(r, BaseException)), None)
        if failed is not None:
            if not isinstance(queued, BaseException):
                # Queued, but not listed (Redis failed), not followed, or its message
                # not stored (history failed): stop it before a worker runs it for a
                # client that is told it failed.
                with contextlib.suppress(RedisError):
                    await svc.registry.request_cancel(job_id, svc.settings.job_deadline_seconds)
            if fresh and isinstance(also[0], BaseException):
                await _not_begun(svc, user_id, idem_key, job)  # nothing stored to record
            else:
                await _not_queued(svc, user_id, request_id, idem_key, job, failed)
            raise _as_api_error(failed)
        sub = also[1] if fresh else subscribed
        assert isinstance(sub, Subscription)
        JOBS_PUBLISHED.labels(provider).inc()
        log.info("chat.accepted", stream=streaming)
        conversation_id = turn.conversation_id
        first = decode_envelope(meta_raw)
        # A stream may stay open for minutes: hold nothing it no longer needs (the
        # request body and an image in it, the job, an encoder's oversized buffer).
        del body, req, image, image_ref, turn, job, meta, meta_raw, also, alongside, subscribed
        del begin, subscribe, queuing, listing
        if streaming:
            return await relay(
                request,
                svc,
                sub,
                conversation_id=conversation_id,
                provider=provider,
                after_seq=-1,
                first=first,
                catch_up=fresh,
            )
        return await collect(svc, sub, after_seq=0, conversation_id=conversation_id)


def _as_api_error(exc: BaseException) -> BaseException:
    """Redis failing while a turn starts is an outage of a dependency: 503, not 500."""
    if isinstance(exc, (RedisError, OSError)):
        log.error("chat.events_unavailable", error_type=type(exc).__name__)
        err = Unavailable("the event stream store is unavailable", code="events_down")
        err.__cause__ = exc
        return err
    return exc


async def _once(queuing: Awaitable[None], begin: Coroutine[Any, Any, BegunTurn]) -> BegunTurn:
    """`begin`, once the job is queued; not at all when it could not be."""
    try:
        await queuing
    except BaseException:
        begin.close()
        raise
    return await begin


async def _not_begun(svc: Services, user_id: str, idem_key: str | None, job: ChatJob) -> None:
    """A new conversation's turn whose message was not stored: nothing to record; its
    Idempotency-Key is freed and its job unlisted."""
    if idem_key is not None:
        await svc.idempotency.release(user_id, idem_key, job.job_id)
    try:
        await svc.registry.finish(job.job_id, job.conversation_id)
    except RedisError:
        log.warning("chat.abandon_unlisted_failed")


async def _not_queued(
    svc: Services,
    user_id: str,
    request_id: str,
    idem_key: str | None,
    job: ChatJob,
    exc: BaseException,
) -> None:
    """A turn that could not be started: free its Idempotency-Key, record why."""
    if idem_key is not None:
        await svc.idempotency.release(user_id, idem_key, job.job_id)
    await _abandon(svc, user_id, request_id, job, exc)


async def _abandon(
    svc: Services, user_id: str, request_id: str, job: ChatJob, exc: BaseException
) -> None:
    """Record that a begun turn was never queued (so the conversation is not left
    locked, and its history says what happened), and unlist its job. Best effort:
    history may be the very thing that is down, or may not have stored the turn."""
    reason = exc.message if isinstance(exc, ApiError) else "the job could not be queued"
    try:
        await svc.history.abandon_turn(
            user_id=user_id,
            request_id=request_id,
            job_id=job.job_id,
            conversation_id=job.conversation_id,
            provider=job.provider,
            error=reason,
        )
    except ApiError:
        log.warning("chat.abandon_failed")
    try:  # nor listed as a running job that another device could attach to
        await svc.registry.finish(job.job_id, job.conversation_id)
    except RedisError:
        log.warning("chat.abandon_unlisted_failed")


def _active_ttl(svc: Services) -> int:
    return int(svc.settings.job_deadline_seconds + 120)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(key):
        raise BadRequest("Idempotency-Key: must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
    return key


async def attach(
    request: web.Request, svc: Services, user_id: str, job_id: str, streaming: bool
) -> web.StreamResponse:
    """A retried POST with the same Idempotency-Key follows the first one's job."""
    async with svc.hub.subscribe(job_id) as sub:
        meta = await svc.registry.get(job_id)
        if meta is not None and meta.user_id != user_id:
            raise Forbidden("job belongs to another user")
        if meta is not None:
            structlog.contextvars.bind_contextvars(conversation_id=meta.conversation_id)
        if not streaming:
            return await collect(
                svc, sub, after_seq=-1, conversation_id=meta.conversation_id if meta else ""
            )
        return await relay(
            request,
            svc,
            sub,
            conversation_id=meta.conversation_id if meta else "",
            provider=meta.provider if meta else "",
            after_seq=-1,
        )
