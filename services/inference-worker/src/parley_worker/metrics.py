from prometheus_client import Counter, Gauge, Histogram

TURNS = Counter("parley_worker_turns_total", "Finished turns", ["provider", "status"])
TURN_SECONDS = Histogram(
    "parley_worker_turn_seconds",
    "Time from job start to the provider's last chunk",
    ["provider"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320),
)
TOKENS = Counter("parley_worker_tokens_total", "Provider tokens", ["provider", "kind"])
IN_FLIGHT = Gauge("parley_worker_turns_in_flight", "Turns being generated", ["provider"])
RETRIES = Counter("parley_worker_retries_total", "Provider calls retried", ["provider"])
FALLBACKS = Counter(
    "parley_worker_fallbacks_total", "Turns handed to the next provider", ["provider", "to"]
)
