"""The gateway's Prometheus metrics (served on /metrics). Per-turn metrics are observed
once per turn or stream, never per token. README "Observability" says what to alert on."""

from parley_common.http import REQUEST_BUCKETS
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("parley_gateway_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "parley_gateway_request_seconds",
    "HTTP request duration (streams: until the stream ends)",
    ["method", "route", "status"],
    buckets=REQUEST_BUCKETS,
)
STREAMS = Gauge("parley_gateway_streams_open", "SSE streams open")
FIRST_EVENT_SECONDS = Histogram(
    "parley_gateway_first_token_seconds",
    "Time from accepting a turn to its first assistant or reasoning event",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
STREAM_SECONDS = Histogram(
    "parley_gateway_stream_seconds",
    "How long an SSE stream of a new turn stayed open, by how it ended",
    ["provider", "outcome"],
    buckets=(0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320, 640),
)
STREAM_RESYNCS = Counter(
    "parley_gateway_stream_resyncs_total", "Streams re-read from the replay log"
)
JOBS_PUBLISHED = Counter("parley_gateway_jobs_published_total", "Jobs accepted", ["provider"])
PUBLISH_SECONDS = Histogram(
    "parley_gateway_job_publish_seconds",
    "Time to publish a job to RabbitMQ until the broker confirmed it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PUBLISH_FAILURES = Counter(
    "parley_gateway_job_publish_failures_total",
    "Jobs the broker did not confirm (the client got a 503)",
    ["code"],
)
SHUTDOWN_STREAMS = Counter(
    "parley_gateway_streams_moved_total",
    "Streams ended by a gateway shutdown with an event telling the client to resume",
)
