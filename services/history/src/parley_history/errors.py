"""History's domain errors; each carries its HTTP status and a stable code."""

from __future__ import annotations


class HistoryError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, **extra: str) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class BadRequest(HistoryError):
    status = 400
    code = "bad_request"


class Forbidden(HistoryError):
    status = 403
    code = "forbidden"


class NotFound(HistoryError):
    status = 404
    code = "not_found"


class TurnInProgress(HistoryError):
    status = 409
    code = "turn_in_progress"


class Conflict(HistoryError):
    status = 409
    code = "conflict"
