from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("parley_gateway_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "parley_gateway_request_seconds", "HTTP request duration (streams: until the end)", ["route"]
)
STREAMS = Gauge("parley_gateway_streams_open", "SSE streams open")
FIRST_EVENT_SECONDS = Histogram(
    "parley_gateway_first_token_seconds",
    "Time from accepting a turn to its first assistant or reasoning event",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
STREAM_RESYNCS = Counter(
    "parley_gateway_stream_resyncs_total", "Streams re-read from the replay log"
)
JOBS_PUBLISHED = Counter("parley_gateway_jobs_published_total", "Jobs accepted", ["provider"])
