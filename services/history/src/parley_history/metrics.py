"""History's Prometheus metrics (served on /metrics). README "Observability" says what
to alert on."""

import functools
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from parley_common.http import REQUEST_BUCKETS
from prometheus_client import Counter, Gauge, Histogram
from pymongo.errors import PyMongoError

REQUESTS = Counter("parley_history_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "parley_history_request_seconds",
    "HTTP request duration",
    ["method", "route", "status"],
    buckets=REQUEST_BUCKETS,
)
TURNS_SAVED = Counter("parley_history_turns_saved_total", "Turn results saved", ["status"])
TURNS_BEGUN = Counter("parley_history_turns_begun_total", "User messages stored")
RESULTS_EARLY = Counter(
    "parley_history_results_early_total",
    "Turn results put back because their new conversation was not stored yet",
)
WRITE_SECONDS = Histogram(
    "parley_history_write_seconds",
    "Time to store one write in MongoDB (successful or not)",
    ["op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WRITE_ERRORS = Counter(
    "parley_history_write_errors_total", "MongoDB writes that raised", ["op", "error"]
)
RESULTS_IN_FLIGHT = Gauge(
    "parley_history_results_in_flight", "Turn results being saved and announced right now"
)

P = ParamSpec("P")
R = TypeVar("R")


def timed_write(op: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Observe a Store write's duration as `parley_history_write_seconds{op}` (and count
    it in `parley_history_write_errors_total` when MongoDB raised)."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            except PyMongoError as exc:
                WRITE_ERRORS.labels(op, type(exc).__name__).inc()
                raise
            finally:
                WRITE_SECONDS.labels(op).observe(time.perf_counter() - started)

        return timed

    return wrap
