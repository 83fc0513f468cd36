"""The worker's Prometheus metrics (served on /metrics at WORKER_PORT). Every turn
metric is observed once per turn, never per token. README "Observability" says what
to alert on."""

from parley_common.http import REQUEST_BUCKETS
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("parley_worker_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "parley_worker_request_seconds",
    "HTTP request duration",
    ["method", "route", "status"],
    buckets=REQUEST_BUCKETS,
)
TURNS = Counter("parley_worker_turns_total", "Finished turns", ["provider", "status"])
TURN_SECONDS = Histogram(
    "parley_worker_turn_seconds",
    "Time from job start to the provider's last chunk",
    ["provider"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320),
)
TOKENS = Counter("parley_worker_tokens_total", "Provider tokens", ["provider", "kind"])
IN_FLIGHT = Gauge("parley_worker_turns_in_flight", "Turns being generated", ["provider"])
QUEUE_WAIT_SECONDS = Histogram(
    "parley_worker_queue_wait_seconds",
    "Time from the gateway accepting a job to a worker starting it",
    ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
RETRIES = Counter("parley_worker_retries_total", "Provider calls retried", ["provider"])
FALLBACKS = Counter(
    "parley_worker_fallbacks_total", "Turns handed to the next provider", ["provider", "to"]
)
ERRORS = Counter(
    "parley_worker_turn_errors_total",
    "Turns that ended in an error, by the error code the client got",
    ["provider", "code"],
)
RETURNED = Counter(
    "parley_worker_jobs_returned_total",
    "Jobs handed back to the queue unfinished because the worker was stopping",
    ["provider"],
)
