"""History's internal HTTP API (called by the gateway, never by clients) and its wiring."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aio_pika
import orjson
import redis.asyncio as aioredis
import structlog
from aio_pika.abc import AbstractQueue, AbstractRobustConnection
from aiohttp import web
from parley_common.amqp import (
    declare_dead_jobs_queue,
    declare_exchanges,
    declare_history_queue,
    open_channel,
)
from parley_common.events import JobEvents
from parley_common.http import (
    NDJSON,
    add_probe_routes,
    amqp_connected,
    request_metrics,
    route_of,
)
from parley_common.jobs import JobRegistry
from parley_common.schemas import ImageRef, TurnResult, TurnStatus
from parley_common.topology import Topology
from pydantic import BaseModel, ConfigDict, ValidationError
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from parley_history import handlers
from parley_history.consumer import TurnConsumer
from parley_history.context import (
    AUTH_CHECK,
    REGISTRY,
    REQUEST_ID_HEADER,
    STORE,
    USER_HEADER,
    user_of,
)
from parley_history.errors import BadRequest, HistoryError
from parley_history.metrics import REQUEST_SECONDS, REQUESTS, TURNS_BEGUN
from parley_history.settings import HistorySettings
from parley_history.store import Store, open_client

log = structlog.get_logger("parley_history.app")

SETTINGS = web.AppKey("settings", HistorySettings)
__all__ = ["AUTH_CHECK", "REQUEST_ID_HEADER", "SETTINGS", "STORE", "USER_HEADER", "create_app"]


class BeginTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation_id: str | None = None
    # The id for a new conversation, chosen by the gateway (which queues the job while
    # the message is stored); only without `conversation_id`.
    new_conversation_id: str | None = None
    channel: str = "web"
    text: str
    provider: str
    job_id: str
    image: ImageRef | None = None
    # How long the conversation stays locked to this turn if its result never comes.
    lock_seconds: int = 900
    # Answer with the context first and store the message after (two lines of JSON):
    # the gateway queues the job meanwhile (ADR 10).
    staged: bool = False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Probes answer without the service credential (kubelet and Prometheus call them).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Binds the request id (handlers bind user, conversation and job as they learn
    them), renders errors, and writes one canonical `http.request` line per request
    (probes at debug level)."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=request.headers.get(REQUEST_ID_HEADER, ""),
    )
    started = time.perf_counter()
    status = 500
    try:
        response = await _answer(request, handler)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        (log.debug if request.path in PUBLIC_PATHS else log.info)(
            "http.request",
            method=request.method,
            path=route_of(request),
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        # Every other path, routed or not, needs the credential (handlers check again).
        request.app[AUTH_CHECK](request)
    try:
        return await handler(request)
    except HistoryError as exc:
        return web.json_response(
            {"error": exc.message, "code": exc.code, **exc.extra}, status=exc.status
        )
    except web.HTTPException as exc:
        # aiohttp's own answers (unknown route, wrong method, body too large) in the
        # same JSON shape as every other error, so the gateway can read them.
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return web.json_response(
            {"error": exc.reason, "code": exc.reason.lower().replace(" ", "_")},
            status=exc.status,
        )


MIN_SERVICE_TOKEN_CHARS = 16


class MissingServiceToken(RuntimeError):
    """History will not serve its internal API without a service credential."""


class ServiceAuth:
    """Checks the service credential that gateway and workers present:
    `Authorization: Bearer <HISTORY_SERVICE_TOKEN>`, compared in constant time.

    The token is required: without one (or with one too short to be a secret) the
    service does not start, unless HISTORY_ALLOW_NO_TOKEN=1 says so explicitly.
    """

    def __init__(self, settings: HistorySettings) -> None:
        token = settings.history_service_token.get_secret_value()
        if not token and settings.history_allow_no_token:
            log.warning(
                "history.no_service_token",
                detail="HISTORY_ALLOW_NO_TOKEN is set: the internal API is open to anyone "
                "who can reach it",
            )
            self._token: bytes | None = None
            return
        if len(token) < MIN_SERVICE_TOKEN_CHARS:
            raise MissingServiceToken(
                "HISTORY_SERVICE_TOKEN must be set to a random string of at least "
                f"{MIN_SERVICE_TOKEN_CHARS} characters (HISTORY_ALLOW_NO_TOKEN=1 runs "
                "without one, for development only)"
            )
        self._token = token.encode()

    def __call__(self, request: web.Request) -> None:
        if self._token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(
            given.encode(errors="replace"), self._token
        ):
            raise web.HTTPUnauthorized(
                text='{"error": "service credential required", "code": "unauthorized"}',
                content_type="application/json",
            )


async def begin_turn(request: web.Request) -> web.StreamResponse:
    request.app[AUTH_CHECK](request)
    user = user_of(request)
    try:
        body = BeginTurn.model_validate_json(await request.read())
    except ValidationError as exc:
        raise BadRequest(f"invalid begin-turn body: {exc.errors()[0]['loc']}") from exc
    structlog.contextvars.bind_contextvars(job_id=body.job_id, provider=body.provider)
    if body.conversation_id is not None:
        structlog.contextvars.bind_contextvars(conversation_id=body.conversation_id)
    chosen = body.new_conversation_id
    if chosen is not None:
        if body.conversation_id is not None:
            raise BadRequest("new_conversation_id: only for a new conversation")
        if not chosen.startswith(f"{user}:") or len(chosen) > handlers.MAX_ID_CHARS:
            raise BadRequest("new_conversation_id: not an id in the user's namespace")
    turn = await request.app[STORE].begin_turn(
        user_id=user,
        conversation_id=body.conversation_id,
        channel=body.channel,
        text=body.text,
        image=body.image,
        provider=body.provider,
        job_id=body.job_id,
        lock_seconds=body.lock_seconds,
        new_conversation_id=chosen,
        staged=body.staged,
    )
    structlog.contextvars.bind_contextvars(conversation_id=turn.conversation_id)
    log.info(
        "turn.begun",
        created=turn.created,
        context_messages=len(turn.context),
    )
    answer: dict[str, object] = {
        "conversation_id": turn.conversation_id,
        "user_message_id": turn.user_message_id,
        "created": turn.created,
    }
    if chosen is None:
        # A caller that named the conversation holds its context already (the message,
        # its image included): it is not sent back.
        answer["messages"] = [m.model_dump(mode="json") for m in turn.context]
    status = 201 if turn.created else 200
    if turn.stored is None:
        TURNS_BEGUN.inc()
        return web.json_response(answer, status=status)
    # Staged: the context now, then the message's insert (its majority write also makes
    # the lock durable), then whether it is stored. The insert happens whether or not
    # the gateway is still there to read the answer: it may have queued the job.
    response = web.StreamResponse(status=status, headers={"Content-Type": NDJSON})
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write(orjson.dumps(answer) + b"\n")
    try:
        await turn.stored
    except PyMongoError as exc:
        log.error("turn.message_unsaved", error_type=type(exc).__name__)
        outcome: dict[str, object] = {
            "error": "conversation history is unavailable",
            "code": "history_down",
        }
    else:
        TURNS_BEGUN.inc()
        outcome = {"stored": True}
    with contextlib.suppress(ConnectionError):
        await response.write(orjson.dumps(outcome) + b"\n")
        await response.write_eof()
    return response


class AbandonTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation_id: str
    provider: str
    error: str


async def abandon_turn(request: web.Request) -> web.Response:
    """The gateway could not queue a begun turn: record that as its reply and free
    the conversation for the next turn."""
    request.app[AUTH_CHECK](request)
    user = user_of(request)
    job_id = request.match_info["job_id"]
    try:
        body = AbandonTurn.model_validate_json(await request.read())
    except ValidationError as exc:
        raise BadRequest(f"invalid abandon body: {exc.errors()[0]['loc']}") from exc
    structlog.contextvars.bind_contextvars(
        job_id=job_id, conversation_id=body.conversation_id, provider=body.provider
    )
    store = request.app[STORE]
    await store.owned_conversation(user, body.conversation_id)
    await store.save_result(
        TurnResult(
            job_id=job_id,
            request_id=request.headers.get(REQUEST_ID_HEADER, ""),
            user_id=user,
            conversation_id=body.conversation_id,
            provider=body.provider,
            status=TurnStatus.error,
            error=body.error,
            error_code="job_not_queued",
            last_seq=0,
            finished_at=datetime.now(UTC),
        )
    )
    log.warning("turn.abandoned")
    return web.json_response({"ok": True})


def _database_name(settings: HistorySettings) -> str:
    parsed = parse_uri(settings.mongodb_url.get_secret_value())
    return parsed.get("database") or settings.mongodb_database


async def _mongo_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = open_client(settings.mongodb_url.get_secret_value())
    store = Store(client[_database_name(settings)], settings.history_context_messages)
    await store.ensure_indexes()
    app[STORE] = store
    yield
    await client.close()


@dataclass(slots=True)
class Consuming:
    """History's broker and Redis side: the turn consumer and its subscriptions."""

    connection: AbstractRobustConnection
    redis: aioredis.Redis
    consumer: TurnConsumer
    subscriptions: list[tuple[AbstractQueue, str]] = field(default_factory=list)
    draining: bool = False

    async def stop_consuming(self) -> None:
        """No new deliveries (idempotent); messages being handled go on."""
        if self.draining:
            return
        self.draining = True
        for queue, tag in self.subscriptions:
            # A broker that is down cannot be told; closing the connection ends it too.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await queue.cancel(tag)


CONSUMING = web.AppKey("consuming", Consuming)


async def _consumer_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    topo = Topology(settings.parley_namespace)
    redis = settings.redis_client()
    connection = await aio_pika.connect_robust(settings.rabbitmq_url.get_secret_value())
    channel = await open_channel(connection, prefetch=settings.history_prefetch)
    exchanges = await declare_exchanges(channel, topo)
    queue = await declare_history_queue(channel, topo, exchanges)
    registry = JobRegistry(redis, topo)
    app[REGISTRY] = registry
    consumer = TurnConsumer(app[STORE], JobEvents(redis, topo, settings.replay_log_ttl), registry)
    consuming = Consuming(connection, redis, consumer)
    consuming.subscriptions.append((queue, await queue.consume(consumer.on_message)))
    dead_queue = await declare_dead_jobs_queue(channel, topo, exchanges)
    consuming.subscriptions.append((dead_queue, await dead_queue.consume(consumer.on_dead_letter)))
    app[CONSUMING] = consuming
    log.info("history.consuming", queue=queue.name)
    yield
    # Drain: stop taking turn results, let those being saved finish (bounded), close.
    await consuming.stop_consuming()
    left = await consumer.drain(settings.shutdown_grace_seconds)
    if left:
        log.warning("history.drain_incomplete", in_flight=left)
    await connection.close()
    await redis.aclose()


async def _stop_consuming(app: web.Application) -> None:
    """SIGTERM (on_shutdown, before in-flight HTTP requests are waited for)."""
    if CONSUMING in app:
        await app[CONSUMING].stop_consuming()


def create_app(settings: HistorySettings) -> web.Application:
    app = web.Application(
        middlewares=[request_metrics(REQUESTS, REQUEST_SECONDS), context_middleware],
        client_max_size=16 * 1024 * 1024,
    )
    app[SETTINGS] = settings
    app[AUTH_CHECK] = ServiceAuth(settings)
    app.cleanup_ctx.append(_mongo_ctx)
    app.cleanup_ctx.append(_consumer_ctx)
    app.router.add_post("/internal/v1/turns", begin_turn)
    app.router.add_post("/internal/v1/turns/{job_id}/abandon", abandon_turn)
    handlers.add_routes(app)

    async def mongo_ready() -> object:
        return await app[STORE].db.command("ping")

    async def redis_ready() -> object:
        return await app[CONSUMING].redis.ping()

    async def amqp_ready() -> object:
        return await amqp_connected(app[CONSUMING].connection)

    # History's own dependencies: MongoDB (its store), RabbitMQ (turn results) and
    # Redis (where it announces `done`/`error`).
    add_probe_routes(
        app,
        {"mongodb": mongo_ready, "redis": redis_ready, "rabbitmq": amqp_ready},
        draining=lambda: CONSUMING in app and app[CONSUMING].draining,
    )
    app.on_shutdown.append(_stop_consuming)
    return app
