"""`make bench`: latency, throughput and memory of the streaming path.

Runs the whole stack in one process (simulator, history, worker, gateway) on the
real RabbitMQ, Redis and MongoDB, like the integration tests, and measures what a
client sees:

- time to first token (TTFT): from sending the POST to the first `assistant` event;
  the simulator answers instantly, so this is Parley's own overhead;
- end-to-end time of a turn (until `done`, which means saved);
- token throughput of one long stream;
- many concurrent streams: all complete, total time, events per second;
- resident memory growth of the process while those streams are open.

Results are printed and written to `.run/bench.json`; each has a target, and the run
says which were met. Numbers vary with the machine: compare runs on the same one.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from parley_common.logging import configure_logging

from tests.support.infra import provide_infra
from tests.support.sse import iter_sse
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "ttft_p50_ms": 40.0,
    "ttft_p95_ms": 80.0,
    "turn_p95_ms": 120.0,
    "long_stream_tokens_per_s": 2000.0,
    "concurrent_events_per_s": 2000.0,
    "rss_growth_mb_per_100_streams": 60.0,
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def one_turn(stack: Stack, user: str, text: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = 0.0
    events = 0
    async with stack.http.post(
        f"{stack.url}/api/chat",
        json={"text": text, "provider": "groq"},
        headers=stack.auth(user) | {"Accept": "text/event-stream"},
    ) as resp:
        async for ev in iter_sse(resp):
            events += 1
            if ev.event == "assistant" and not first:
                first = time.perf_counter() - started
            if ev.event in ("done", "error"):
                if ev.event == "error":
                    raise RuntimeError(ev.data)
                break
    return first * 1000, (time.perf_counter() - started) * 1000, events


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> int:
    # Log lines would be measured too: keep only warnings, as JSON, like production.
    configure_logging("bench", "json", "warning")
    results: dict[str, Any] = {}
    with provide_infra() as infra:
        stack = await Stack(infra, providers=("groq",)).start()
        try:
            for _ in range(5):  # warm up connections and SDK clients
                await one_turn(stack, "bench-warm", "warm up")
            ttfts, turns = [], []
            for i in range(60):
                ttft, total, _ = await one_turn(stack, f"bench-{i % 5}", "how fast are you")
                ttfts.append(ttft)
                turns.append(total)
            results["ttft_p50_ms"] = statistics.median(ttfts)
            results["ttft_p95_ms"] = pct(ttfts, 0.95)
            results["turn_p95_ms"] = pct(turns, 0.95)

            started = time.perf_counter()
            _, _, events = await one_turn(stack, "bench-long", "[[sim:tokens=5000]]")
            results["long_stream_tokens_per_s"] = events / (time.perf_counter() - started)

            before = rss_mb()
            n = 100
            started = time.perf_counter()
            outcomes = await asyncio.gather(
                *(one_turn(stack, f"bench-c{i}", "[[sim:tokens=200]]") for i in range(n))
            )
            elapsed = time.perf_counter() - started
            results["concurrent_streams"] = n
            results["concurrent_seconds"] = elapsed
            results["concurrent_events_per_s"] = sum(o[2] for o in outcomes) / elapsed
            results["rss_growth_mb_per_100_streams"] = max(0.0, rss_mb() - before) * 100 / n
            results["rss_mb"] = rss_mb()
        finally:
            await stack.stop()

    lower_is_better = {"ttft_p50_ms", "ttft_p95_ms", "turn_p95_ms", "rss_growth_mb_per_100_streams"}
    print(f"{'measure':34} {'value':>12} {'target':>10}  met")
    for key, value in results.items():
        target = TARGETS.get(key)
        met = ""
        if target is not None:
            ok = value <= target if key in lower_is_better else value >= target
            met = "yes" if ok else "NO"
        shown = f"{target:>10.1f}" if target is not None else " " * 10
        print(f"{key:34} {value:12.1f} {shown}  {met}")
    out = ROOT / ".run" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"results": results, "targets": TARGETS}, indent=2))
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
