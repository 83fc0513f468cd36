"""What every service's HTTP side shares: /healthz, /readyz, /metrics, and the request
metrics middleware.

`/readyz` asks every dependency at once and answers 503 naming each one that did not
answer within 2 s, or 503 `draining` once the process has begun to shut down; it
answers 200 only when every check passed. `/healthz` answers while the process runs,
whatever its dependencies do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from aio_pika.abc import AbstractConnection
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

ReadyCheck = Callable[[], Awaitable[object]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Buckets for HTTP request latency: the API's own answers take milliseconds; a streamed
# turn is counted until its stream ends, so the top buckets are in minutes.
# History's staged begin-turn answer (ADR 10): two lines of JSON, the context, then
# whether the user message is stored.
NDJSON = "application/x-ndjson"

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def route_of(request: web.Request) -> str:
    """The route's template (`/api/chat/jobs/{job_id}/events`), never the raw path: a
    metric label or log field must not grow with ids."""
    info = request.match_info
    resource = info.route.resource
    if info.http_exception is not None or resource is None:
        return "unmatched"
    return resource.canonical


def request_metrics(requests: Counter, seconds: Histogram) -> Middleware:
    """A middleware counting requests (`method`, `route`, `status`) and observing their
    duration (`method`, `route`, `status`) in the service's own metrics. It is the
    outermost middleware, so the status is the one the client got."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = route_of(request)
            requests.labels(request.method, route, str(status)).inc()
            seconds.labels(request.method, route, str(status)).observe(
                time.perf_counter() - started
            )

    return middleware


async def amqp_connected(connection: AbstractConnection | None) -> object:
    """Readiness of a (robust) broker connection. `is_closed` alone is not enough: a
    robust connection that lost the broker is not closed, it is reconnecting, and only
    `connected` says whether it has a broker right now."""
    if connection is None or connection.is_closed or not connection.connected.is_set():
        raise ConnectionError("not connected to RabbitMQ")
    return True


async def _answers(check: ReadyCheck) -> str | None:
    """None when the dependency answered within 2 s; else why not (an exception name)."""
    try:
        async with asyncio.timeout(2):
            await check()
    except Exception as exc:  # a probe reports, it never raises
        return type(exc).__name__
    return None


def add_probe_routes(
    app: web.Application,
    checks: Mapping[str, ReadyCheck],
    draining: Callable[[], bool] = lambda: False,
) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        if draining():
            return web.json_response(
                {"error": "shutting down", "failed": {"process": "draining"}}, status=503
            )
        names = list(checks)
        outcomes = await asyncio.gather(*(_answers(checks[n]) for n in names))
        failed = {n: why for n, why in zip(names, outcomes, strict=True) if why is not None}
        if failed:
            return web.json_response(
                {"error": "dependencies not ready", "failed": failed}, status=503
            )
        return web.json_response({"ok": True, "checked": sorted(checks)})

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        resp = web.Response(body=body)
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
