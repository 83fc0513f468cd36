"""What history's HTTP handlers reach per request: the store by AppKey, and the caller.

Kept apart from `app.py` so that the handler modules and the app factory can both
import it.
"""

from __future__ import annotations

from typing import Protocol

import structlog
from aiohttp import web
from parley_common.jobs import JobRegistry

from parley_history.errors import BadRequest
from parley_history.store import Store


class ServiceCheck(Protocol):
    """Raises 401 unless the request carries the service credential (when one is set)."""

    def __call__(self, request: web.Request) -> None: ...


STORE = web.AppKey("store", Store)
REGISTRY = web.AppKey("registry", JobRegistry)
AUTH_CHECK = web.AppKey("auth_check", ServiceCheck)

USER_HEADER = "X-Parley-User"
REQUEST_ID_HEADER = "X-Request-ID"


MAX_USER_CHARS = 256


def user_of(request: web.Request) -> str:
    """The user the (authenticated) caller acts for; only ever set by the gateway."""
    user = request.headers.get(USER_HEADER, "")
    if not user:
        raise BadRequest(f"{USER_HEADER} header is required")
    if len(user) > MAX_USER_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        raise BadRequest(f"{USER_HEADER}: not a valid user id")
    structlog.contextvars.bind_contextvars(user_id=user)
    return user


def caller(request: web.Request) -> str:
    """Check the service credential, then return the user the gateway acts for."""
    request.app[AUTH_CHECK](request)
    return user_of(request)
