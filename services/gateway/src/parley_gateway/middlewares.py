"""Request id, one canonical log line per request, and error rendering."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from parley_gateway.errors import ApiError, PayloadTooLarge
from parley_gateway.metrics import REQUEST_SECONDS, REQUESTS

log = structlog.get_logger("parley_gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID_RE.match(given) else f"req-{secrets.token_hex(8)}"
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except ApiError as err:
        status = err.status
        response = error_response(err)
    except web.HTTPRequestEntityTooLarge:
        too_large = PayloadTooLarge("body: request body too large")
        status = too_large.status
        response = error_response(too_large)
    except web.HTTPException as exc:
        status = exc.status
        response = web.json_response(
            {"error": exc.reason, "code": exc.reason.lower().replace(" ", "_")},
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except Exception:
        log.exception("http.unhandled")
        response = web.json_response({"error": "internal error", "code": "internal"}, status=500)
    elapsed = time.perf_counter() - started
    REQUESTS.labels(request.method, route_name, str(status)).inc()
    REQUEST_SECONDS.labels(route_name).observe(elapsed)
    log.info(
        "http.request",
        method=request.method,
        path=route_name,
        status=status,
        duration_ms=round(elapsed * 1000, 1),
    )
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response
