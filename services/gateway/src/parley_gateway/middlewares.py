"""Request id, one canonical log line per request, error rendering, authentication and
the per-user request rate.

Order (outermost first): `request_context` (binds the request id, renders every
ApiError), `authenticate` (every route but the public ones; stores the user id on the
request), `rate_limit` (per user, after authentication), `known_query` (a query
parameter the OpenAPI document does not name is a 400, as unknown body fields are).
Handlers read the user with `request[USER_ID]` and never authenticate themselves.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from parley_gateway import openapi
from parley_gateway.context import services
from parley_gateway.errors import ApiError, BadRequest, PayloadTooLarge
from parley_gateway.metrics import REQUEST_SECONDS, REQUESTS

log = structlog.get_logger("parley_gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
USER_ID = web.RequestKey("user_id", str)
# Routes that answer without a token: probes, metrics and the API document.
PUBLIC_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", openapi.PATH})
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
    REQUEST_SECONDS.labels(request.method, route_name, str(status)).observe(elapsed)
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


def _protected(request: web.Request) -> bool:
    """A routed, non-public endpoint (unrouted paths and wrong methods get 404/405)."""
    info = request.match_info
    if info.http_exception is not None:
        return False
    resource = info.route.resource
    return resource is not None and resource.canonical not in PUBLIC_ROUTES


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _protected(request):
        user_id = await services(request).auth.user_id(request)
        request[USER_ID] = user_id
        structlog.contextvars.bind_contextvars(user_id=user_id)
    return await handler(request)


# Set on a handler that counts its request against the rate limit itself.
COUNTS_ITS_OWN = "_parley_counts_its_own_rate"


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    user_id = request.get(USER_ID)
    if user_id is not None and not getattr(request.match_info.handler, COUNTS_ITS_OWN, False):
        await services(request).limits.hit(user_id)
    return await handler(request)


@web.middleware
async def known_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    info = request.match_info
    resource = info.route.resource
    if info.http_exception is None and resource is not None and request.query:
        allowed = openapi.query_parameters(request.method, resource.canonical)
        if allowed is not None:
            for name in request.query:
                if name not in allowed:
                    options = ", ".join(sorted(allowed)) or "none"
                    raise BadRequest(f"{name[:40]}: unknown query parameter; allowed: {options}")
    return await handler(request)


def stream_limited(handler: Handler) -> Handler:
    """Wrap a streaming endpoint (a chat turn, a resumed stream) so that it holds one of
    the user's stream slots (MAX_STREAMS_PER_USER) until its response has ended."""

    async def limited(request: web.Request) -> web.StreamResponse:
        # The request is counted against the rate limit here, alongside taking the
        # slot (the `rate_limit` middleware leaves it to this wrapper).
        async with services(request).limits.stream_slot(request[USER_ID], count_request=True):
            return await handler(request)

    setattr(limited, COUNTS_ITS_OWN, True)

    return limited
