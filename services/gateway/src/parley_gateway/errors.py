"""Errors that become responses. Every non-2xx body is `{"error": ..., "code": ...}`.

ApiError
├── BadRequest (400)      bad input; the message names the field
├── Unauthorized (401)    missing or bad token
├── Forbidden (403)       another user's object
├── NotFound (404)
├── Conflict (409)
├── PayloadTooLarge (413)
├── TooManyRequests (429) a per-user limit; carries Retry-After
├── BadGateway (502)      the provider failed (JSON requests)
├── Unavailable (503)     a dependency (broker, history) is down; carries Retry-After
└── GatewayTimeout (504)
"""

from __future__ import annotations


class ApiError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = {}
        self.extra: dict[str, object] = {}

    def body(self) -> dict[str, object]:
        return {"error": self.message, "code": self.code, **self.extra}


class BadRequest(ApiError):
    status = 400
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class TooManyRequests(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.headers["Retry-After"] = str(max(1, retry_after))


class BadGateway(ApiError):
    status = 502
    code = "provider_error"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, code=code)
        self.headers["Retry-After"] = str(retry_after)


class GatewayTimeout(ApiError):
    status = 504
    code = "timeout"
