"""The gateway application factory: `create_app(settings)`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import aiohttp
import structlog
from aiohttp import web
from parley_common.http import add_probe_routes, amqp_connected
from parley_common.jobs import JobRegistry
from parley_common.providers import IMPLEMENTED
from parley_common.topology import Topology

from parley_gateway.adapters.event_stream import EventHub
from parley_gateway.adapters.history_client import HistoryClient
from parley_gateway.adapters.idempotency import Idempotency
from parley_gateway.adapters.job_publisher import JobPublisher
from parley_gateway.auth import Authenticator, check_auth_settings
from parley_gateway.context import SERVICES, Services
from parley_gateway.drain import Drain
from parley_gateway.handlers import chat, conversations, jobs
from parley_gateway.middlewares import (
    authenticate,
    known_query,
    rate_limit,
    request_context,
    stream_limited,
)
from parley_gateway.ratelimit import RateLimits
from parley_gateway.settings import GatewaySettings

log = structlog.get_logger("parley_gateway.app")

SETTINGS = web.AppKey("settings", GatewaySettings)


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    topo = Topology(settings.parley_namespace)
    session = aiohttp.ClientSession()
    redis = settings.redis_client(client_name=f"{settings.parley_namespace}gateway")
    connection = await aio_pika.connect_robust(settings.rabbitmq_url.get_secret_value())
    try:
        publisher = JobPublisher(connection, topo)
        await publisher.start(list(IMPLEMENTED))
        hub = EventHub(redis, topo, settings.stream_buffer_events, settings.replay_log_ttl)
        await hub.start()
        app[SERVICES] = Services(
            settings=settings,
            auth=Authenticator(settings, session),
            history=HistoryClient(
                session,
                settings.history_url,
                settings.history_service_token.get_secret_value(),
                settings.history_timeout,
            ),
            publisher=publisher,
            hub=hub,
            registry=JobRegistry(redis, topo),
            idempotency=Idempotency(redis, topo),
            redis=redis,
            limits=RateLimits(
                redis,
                topo,
                per_minute=settings.rate_limit_per_minute,
                max_streams=settings.max_streams_per_user,
                lease_seconds=settings.stream_lease_seconds,
            ),
            drain=Drain(),
        )
        log.info("gateway.ready", providers=settings.available_providers())
        yield
        await app[SERVICES].limits.aclose()
        await hub.stop()
    finally:
        await connection.close()
        await redis.aclose()
        await session.close()


def create_app(settings: GatewaySettings) -> web.Application:
    check_auth_settings(settings)
    app = web.Application(
        middlewares=[request_context, authenticate, rate_limit, known_query],
        # The largest request body, set explicitly (MAX_BODY_BYTES); beyond it, 413.
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_services_ctx)
    app.router.add_post("/api/chat", stream_limited(chat.chat))
    app.router.add_post("/api/chat/stream", stream_limited(chat.chat))
    conversations.add_routes(app)
    jobs.add_routes(app)

    async def redis_ready() -> object:
        return await app[SERVICES].redis.ping()

    async def amqp_ready() -> object:
        return await amqp_connected(app[SERVICES].publisher.connection)

    async def history_ready() -> object:
        svc = app[SERVICES]
        async with aiohttp.ClientSession() as s, s.get(f"{svc.settings.history_url}/healthz") as r:
            r.raise_for_status()
        return True

    def draining() -> bool:
        return SERVICES in app and app[SERVICES].drain.draining

    add_probe_routes(
        app,
        {"redis": redis_ready, "rabbitmq": amqp_ready, "history": history_ready},
        draining=draining,
    )
    app.on_shutdown.append(_drain)
    return app


async def _drain(app: web.Application) -> None:
    """SIGTERM: the listener is already closed; let open streams finish (drain.py)."""
    if SERVICES in app:
        await app[SERVICES].drain.drain(app[SETTINGS].shutdown_grace_seconds)
